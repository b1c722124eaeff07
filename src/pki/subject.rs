//! Subjects with several O attributes. Kubernetes' x509 authentication reads one group per
//! O, but rcgen's `DistinguishedName` holds a single value per attribute type. So a
//! certificate for several groups is signed by rcgen with only the CN, then its subject is
//! replaced by a hand-encoded Name and the TBS part is signed again with the CA key and the
//! same algorithm. Only the few DER shapes below are handled; anything else is an error.

use rcgen::{KeyPair, SigningKey};

use super::PkiError;

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const UTF8_STRING: u8 = 0x0c;
const BIT_STRING: u8 = 0x03;
const VERSION_TAG: u8 = 0xa0;
/// 2.5.4.3 and 2.5.4.10, DER-encoded.
const OID_COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];
const OID_ORGANIZATION: [u8; 3] = [0x55, 0x04, 0x0a];
/// Position of `subject` in TBSCertificate: version, serial, signature, issuer, validity.
const SUBJECT_INDEX: usize = 5;

fn malformed(what: &str) -> PkiError {
    PkiError::Generate(format!("rewriting the certificate subject: {what}"))
}

/// One DER element: tag, contents, and the whole encoding.
struct Tlv<'a> {
    tag: u8,
    contents: &'a [u8],
    whole: &'a [u8],
}

/// Reads the element at the start of `bytes`.
fn read_tlv(bytes: &[u8]) -> Result<Tlv<'_>, PkiError> {
    let (&tag, rest) = bytes.split_first().ok_or_else(|| malformed("truncated"))?;
    let (&first, rest) = rest.split_first().ok_or_else(|| malformed("truncated"))?;
    let (len, len_bytes) = if first < 0x80 {
        (usize::from(first), 0)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err(malformed("bad length"));
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, n)
    };
    let header = 2 + len_bytes;
    let end = header
        .checked_add(len)
        .filter(|end| *end <= bytes.len())
        .ok_or_else(|| malformed("length past the end"))?;
    Ok(Tlv {
        tag,
        contents: &bytes[header..end],
        whole: &bytes[..end],
    })
}

/// The elements that make up `contents`, in order.
fn children(mut contents: &[u8]) -> Result<Vec<Tlv<'_>>, PkiError> {
    let mut out = Vec::new();
    while !contents.is_empty() {
        let tlv = read_tlv(contents)?;
        contents = &contents[tlv.whole.len()..];
        out.push(tlv);
    }
    Ok(out)
}

/// Encodes one element.
fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
    let len = contents.len();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(contents);
    out
}

/// `Name` with one CN and one O per organization, each its own RDN, as UTF8String.
fn encode_name(common_name: &str, organizations: &[&str]) -> Vec<u8> {
    let attribute = |oid: &[u8], value: &str| {
        let mut pair = tlv(OID, oid);
        pair.extend(tlv(UTF8_STRING, value.as_bytes()));
        tlv(SET, &tlv(SEQUENCE, &pair))
    };
    let mut rdns = attribute(&OID_COMMON_NAME, common_name);
    for organization in organizations {
        rdns.extend(attribute(&OID_ORGANIZATION, organization));
    }
    tlv(SEQUENCE, &rdns)
}

/// `cert_der` with its subject replaced by CN = `common_name` and one O per entry of
/// `organizations`, signed again by `ca_key` (the key that signed `cert_der`).
pub(crate) fn resign_with_subject(
    cert_der: &[u8],
    common_name: &str,
    organizations: &[&str],
    ca_key: &KeyPair,
) -> Result<Vec<u8>, PkiError> {
    let cert = read_tlv(cert_der)?;
    let parts = children(cert.contents)?;
    let [tbs, algorithm, _signature] = parts.as_slice() else {
        return Err(malformed("not a certificate"));
    };
    let fields = children(tbs.contents)?;
    let fits = cert.tag == SEQUENCE
        && tbs.tag == SEQUENCE
        && algorithm.tag == SEQUENCE
        && fields.len() > SUBJECT_INDEX
        && fields[0].tag == VERSION_TAG
        && fields[SUBJECT_INDEX].tag == SEQUENCE;
    if !fits {
        return Err(malformed("unexpected TBSCertificate layout"));
    }
    let name = encode_name(common_name, organizations);
    let mut tbs_contents = Vec::with_capacity(tbs.contents.len() + name.len());
    for (i, field) in fields.iter().enumerate() {
        if i == SUBJECT_INDEX {
            tbs_contents.extend_from_slice(&name);
        } else {
            tbs_contents.extend_from_slice(field.whole);
        }
    }
    let new_tbs = tlv(SEQUENCE, &tbs_contents);
    let signature = ca_key
        .sign(&new_tbs)
        .map_err(|e| PkiError::Generate(format!("signing {common_name}: {e}")))?;
    let mut bits = vec![0u8]; // no unused bits
    bits.extend(signature);
    let mut contents = new_tbs;
    contents.extend_from_slice(algorithm.whole);
    contents.extend(tlv(BIT_STRING, &bits));
    Ok(tlv(SEQUENCE, &contents))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_round_trip() {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let contents = vec![7u8; len];
            let encoded = tlv(SEQUENCE, &contents);
            let read = read_tlv(&encoded).unwrap();
            assert_eq!(read.tag, SEQUENCE);
            assert_eq!(read.contents.len(), len);
            assert_eq!(read.whole.len(), encoded.len());
        }
        assert!(read_tlv(&[SEQUENCE, 5, 1]).is_err());
        assert!(read_tlv(&[SEQUENCE, 0x85, 1, 1, 1, 1, 1]).is_err());
        assert!(
            resign_with_subject(&[SEQUENCE, 0], "x", &[], &KeyPair::generate().unwrap()).is_err()
        );
    }
}
