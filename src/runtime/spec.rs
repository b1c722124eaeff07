//! (being written: see /work/agent_contract.md)
