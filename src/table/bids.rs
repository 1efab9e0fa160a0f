//! BIDS entity columns: a multi-file table whose files are named by BIDS rules
//! (`sub-01/ses-02/func/sub-01_ses-02_task-rest_run-1_bold.nii.gz`) gets one column per entity present, in BIDS's
//! entity order, then `datatype` and `suffix`, with bids2table's names and types (`run`, `echo`, `flip`, `inv`,
//! `split`, `chunk` are `Int32`; the rest `Utf8`). Values are per file, so filters on them are evaluated once per
//! file before any I/O, like filters on `file`.
//!
//! A file is BIDS-named when its name starts with a `sub-<label>` entity and every part before the suffix is a
//! `key-value` pair. Unknown keys, indices that are not integers and values outside an entity's allowed set are left
//! out (bids2table puts them in `extra_entities`); files that are not BIDS-named get nulls.

use std::path::Path;

use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::scalar::ScalarValue;

/// The entities bids2table knows, in its (BIDS's) order: name, whether an index (integer), allowed values.
const ENTITIES: [(&str, bool, &[&str]); 35] = [
    ("sub", false, &[]),
    ("tpl", false, &[]),
    ("ses", false, &[]),
    ("cohort", false, &[]),
    ("sample", false, &[]),
    ("task", false, &[]),
    ("tracksys", false, &[]),
    ("acq", false, &[]),
    ("nuc", false, &[]),
    ("voi", false, &[]),
    ("ce", false, &[]),
    ("trc", false, &[]),
    ("stain", false, &[]),
    ("rec", false, &[]),
    ("dir", false, &[]),
    ("run", true, &[]),
    ("mod", false, &[]),
    ("echo", true, &[]),
    ("flip", true, &[]),
    ("inv", true, &[]),
    ("mt", false, &["on", "off"]),
    ("part", false, &["mag", "phase", "real", "imag"]),
    ("proc", false, &[]),
    ("hemi", false, &["L", "R"]),
    ("space", false, &[]),
    ("split", true, &[]),
    ("recording", false, &[]),
    ("chunk", true, &[]),
    ("atlas", false, &[]),
    ("seg", false, &[]),
    ("scale", false, &[]),
    ("res", false, &[]),
    ("den", false, &[]),
    ("label", false, &[]),
    ("desc", false, &[]),
];

/// The special columns after the entities.
const DATATYPE: &str = "datatype";
const SUFFIX: &str = "suffix";

/// One entity's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Label(String),
    Index(i32),
}

/// What one BIDS file name says: entity values by position in [`ENTITIES`], the datatype folder and the suffix.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BidsName {
    pub entities: Vec<(usize, Value)>,
    pub datatype: Option<String>,
    pub suffix: Option<String>,
}

impl BidsName {
    /// The value of entity `key` (e.g. `"run"`), if the name has a valid one.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let pos = ENTITIES.iter().position(|(n, _, _)| *n == key)?;
        self.entities
            .iter()
            .find(|(p, _)| *p == pos)
            .map(|(_, v)| v)
    }
}

/// Parse `path` by BIDS rules; `None` when its name is not BIDS-named.
pub fn parse(path: &str) -> Option<BidsName> {
    let p = Path::new(path);
    let file = p.file_name()?.to_str()?;
    let stem = file.split('.').next()?;
    let mut parts: Vec<&str> = stem.split('_').collect();
    let suffix = parts.pop()?;
    if !parts.first()?.starts_with("sub-") || !is_alnum(suffix) {
        return None;
    }
    let mut name = BidsName {
        suffix: Some(suffix.to_string()),
        datatype: datatype(p),
        ..BidsName::default()
    };
    for part in parts {
        let (key, value) = part.split_once('-')?;
        if key.is_empty() || value.is_empty() {
            return None;
        }
        let Some(pos) = ENTITIES.iter().position(|(n, _, _)| *n == key) else {
            continue;
        };
        let (_, index, allowed) = ENTITIES[pos];
        let v = if index {
            match value.parse::<i32>() {
                Ok(n) if n >= 0 => Value::Index(n),
                _ => continue,
            }
        } else if allowed.is_empty() || allowed.contains(&value) {
            Value::Label(value.to_string())
        } else {
            continue;
        };
        if name.entities.iter().all(|(p, _)| *p != pos) {
            name.entities.push((pos, v));
        }
    }
    Some(name)
}

fn is_alnum(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric())
}

/// The folder after `sub-<label>[/ses-<label>]` when it is all lowercase letters (bids2table's rule).
fn datatype(p: &Path) -> Option<String> {
    let parts: Vec<&str> = p
        .parent()?
        .components()
        .filter_map(|c| c.as_os_str().to_str())
        .collect();
    let label = |s: &str, key: &str| s.strip_prefix(key).is_some_and(is_alnum);
    let sub = parts.iter().rposition(|s| label(s, "sub-"))?;
    let mut next = sub + 1;
    if parts.get(next).is_some_and(|s| label(s, "ses-")) {
        next += 1;
    }
    let folder = parts.get(next)?;
    (next + 1 == parts.len()
        && !folder.is_empty()
        && folder.chars().all(|c| c.is_ascii_lowercase()))
    .then(|| folder.to_string())
}

/// Reads one entity column's value from a parsed name.
type Getter = Box<dyn Fn(&BidsName) -> ScalarValue>;

/// The entity columns of a table over `names`: the fields (nullable) and, per file, one value per field. Empty when
/// no file is BIDS-named.
pub fn columns(names: &[&str]) -> (Vec<Field>, Vec<Vec<ScalarValue>>) {
    let parsed: Vec<Option<BidsName>> = names.iter().map(|n| parse(n)).collect();
    if parsed.iter().all(Option::is_none) {
        return (Vec::new(), vec![Vec::new(); names.len()]);
    }
    let present = |pos: usize| {
        parsed
            .iter()
            .flatten()
            .any(|b| b.entities.iter().any(|(p, _)| *p == pos))
    };
    let mut fields = Vec::new();
    let mut getters: Vec<Getter> = Vec::new();
    for (pos, (name, index, _)) in ENTITIES.iter().enumerate() {
        if !present(pos) {
            continue;
        }
        let ty = if *index {
            DataType::Int32
        } else {
            DataType::Utf8
        };
        fields.push(Field::new(*name, ty.clone(), true));
        getters.push(Box::new(move |b: &BidsName| {
            match b.entities.iter().find(|(p, _)| *p == pos).map(|(_, v)| v) {
                Some(Value::Index(n)) => ScalarValue::Int32(Some(*n)),
                Some(Value::Label(s)) => ScalarValue::Utf8(Some(s.clone())),
                None if ty == DataType::Int32 => ScalarValue::Int32(None),
                None => ScalarValue::Utf8(None),
            }
        }));
    }
    if parsed.iter().flatten().any(|b| b.datatype.is_some()) {
        fields.push(Field::new(DATATYPE, DataType::Utf8, true));
        getters.push(Box::new(|b: &BidsName| {
            ScalarValue::Utf8(b.datatype.clone())
        }));
    }
    fields.push(Field::new(SUFFIX, DataType::Utf8, true));
    getters.push(Box::new(|b: &BidsName| ScalarValue::Utf8(b.suffix.clone())));
    let values = parsed
        .iter()
        .map(|b| {
            fields
                .iter()
                .zip(&getters)
                .map(|(f, get)| match b {
                    Some(b) => get(b),
                    None => ScalarValue::try_from(f.data_type()).unwrap_or(ScalarValue::Null),
                })
                .collect()
        })
        .collect();
    (fields, values)
}

/// The names of entity columns a schema's fields could be (for messages and classification).
pub fn is_entity_column(name: &str) -> bool {
    name == DATATYPE || name == SUFFIX || ENTITIES.iter().any(|(n, _, _)| *n == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entities_in_bids_order_with_integer_indices() {
        let b =
            parse("/d/sub-01/ses-2/func/sub-01_ses-2_task-rest_run-01_echo-2_bold.nii.gz").unwrap();
        assert_eq!(b.get("sub"), Some(&Value::Label("01".into())));
        assert_eq!(b.get("run"), Some(&Value::Index(1)));
        assert_eq!(b.get("echo"), Some(&Value::Index(2)));
        assert_eq!(b.datatype.as_deref(), Some("func"));
        assert_eq!(b.suffix.as_deref(), Some("bold"));
        // Unknown keys and bad indices are left out; not a BIDS name without sub-.
        let odd = parse("sub-01_run-x_foo-bar_mt-maybe_T1w.nii").unwrap();
        assert_eq!(odd.get("run"), None);
        assert_eq!(odd.get("mt"), None);
        assert_eq!(odd.datatype, None);
        assert!(parse("/d/stray.nii").is_none());
        assert!(parse("/d/sub-01_task_bold.nii").is_none());
    }

    #[test]
    fn columns_only_for_entities_present() {
        let names = [
            "/d/sub-01/anat/sub-01_T1w.nii",
            "/d/sub-02/func/sub-02_task-a_run-2_bold.nii",
            "/d/notes.nii",
        ];
        let (fields, values) = columns(&names);
        let got: Vec<&str> = fields.iter().map(|f| f.name().as_str()).collect();
        assert_eq!(got, ["sub", "task", "run", "datatype", "suffix"]);
        assert_eq!(fields[2].data_type(), &DataType::Int32);
        assert_eq!(values[1][2], ScalarValue::Int32(Some(2)));
        assert_eq!(values[0][2], ScalarValue::Int32(None));
        assert_eq!(values[2][0], ScalarValue::Utf8(None));
        let (none, _) = columns(&["/a/x.nii", "/a/y.nii"]);
        assert!(none.is_empty());
    }
}
