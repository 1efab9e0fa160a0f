//! What is wrong with a header, in a form a program can inspect: the field at fault and the value read from it
//! (when one field is to blame), and the problem in words.

use std::fmt;

/// A header problem. Its display is the problem in words, which names the field and value itself; the error
/// carrying it ([`crate::VoxelError::Header`]) adds the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderFault {
    /// The header field at fault (`datatype`, `dim`, `vox_offset`, `magic`, ...), or None for the file as a whole
    /// (empty, corrupt compression, no recognisable header).
    pub field: Option<&'static str>,
    /// The value read from that field, as text.
    pub value: Option<String>,
    /// What is wrong.
    pub problem: String,
}

impl HeaderFault {
    /// A problem with the file as a whole.
    pub fn file(problem: impl Into<String>) -> HeaderFault {
        HeaderFault {
            field: None,
            value: None,
            problem: problem.into(),
        }
    }

    /// A field holding a value the format does not allow.
    pub fn field(
        field: &'static str,
        value: impl fmt::Display,
        problem: impl Into<String>,
    ) -> HeaderFault {
        HeaderFault {
            field: Some(field),
            value: Some(value.to_string()),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for HeaderFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problem)
    }
}
