//! Completion indexes of an Indexed Job and their text form in `status.completedIndexes` /
//! `status.failedIndexes`: increasing decimals separated by commas, three or more
//! consecutive ones compressed to `first-last` ("1,3-5,7").

use std::collections::BTreeSet;

/// The annotation (and label) that carries a pod's completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// A set of completion indexes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Indexes(BTreeSet<i32>);

impl Indexes {
    /// Parses the status text, keeping only indexes below `completions` (as upstream, which
    /// drops what a lowered completions count left behind). Garbage is skipped.
    pub fn parse(text: &str, completions: i32) -> Indexes {
        let mut set = BTreeSet::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (first, last) = match part.split_once('-') {
                Some((a, b)) => (a.parse::<i32>(), b.parse::<i32>()),
                None => (part.parse(), part.parse()),
            };
            if let (Ok(first), Ok(last)) = (first, last) {
                set.extend((first.max(0)..=last.min(completions - 1)).filter(|i| *i >= 0));
            }
        }
        Indexes(set)
    }

    pub fn insert(&mut self, index: i32) -> bool {
        self.0.insert(index)
    }

    pub fn contains(&self, index: i32) -> bool {
        self.0.contains(&index)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl std::fmt::Display for Indexes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        let mut run: Option<(i32, i32)> = None;
        let flush = |run: (i32, i32), parts: &mut Vec<String>| match run.1 - run.0 {
            0 => parts.push(run.0.to_string()),
            1 => parts.push(format!("{},{}", run.0, run.1)),
            _ => parts.push(format!("{}-{}", run.0, run.1)),
        };
        for &index in &self.0 {
            run = match run {
                Some((first, last)) if index == last + 1 => Some((first, index)),
                Some(done) => {
                    flush(done, &mut parts);
                    Some((index, index))
                }
                None => Some((index, index)),
            };
        }
        if let Some(done) = run {
            flush(done, &mut parts);
        }
        f.write_str(&parts.join(","))
    }
}

/// The completion index a pod was created for, from its annotation.
pub fn of_pod(annotations: Option<&std::collections::BTreeMap<String, String>>) -> Option<i32> {
    annotations?
        .get(COMPLETION_INDEX)?
        .parse()
        .ok()
        .filter(|i| *i >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compresses_runs_of_three_or_more() {
        let mut set = Indexes::default();
        for i in [7, 1, 3, 4, 5, 9, 10] {
            set.insert(i);
        }
        assert_eq!(set.to_string(), "1,3-5,7,9,10");
        assert_eq!(Indexes::default().to_string(), "");
    }

    #[test]
    fn parses_and_drops_indexes_past_completions() {
        let set = Indexes::parse("0-2,4,6-9", 8);
        assert_eq!(set.to_string(), "0-2,4,6,7");
        assert_eq!(set.len(), 6);
        assert!(set.contains(4) && !set.contains(3));
    }
}
