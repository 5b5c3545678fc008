//! A small reader (and, for tests and tools, writer) of MATLAB level-5 `.mat` files: enough for
//! the Stanford Cars devkit — numeric arrays, char arrays, cell arrays and struct arrays, with
//! zlib-compressed elements.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use crate::error::{Result, TrainError};

const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
const MI_UTF8: u32 = 16;

/// Most bytes one compressed element may inflate to: the devkit's largest file holds a few
/// MB, so a larger stream is a corrupt file or a zip bomb.
const MAX_INFLATED_BYTES: u64 = 256 * 1024 * 1024;
/// Deepest nesting of cells and structs read (the devkit nests two levels).
const MAX_DEPTH: usize = 64;

const MX_CELL: u8 = 1;
const MX_STRUCT: u8 = 2;
const MX_CHAR: u8 = 4;

/// A value of a `.mat` file.
#[derive(Debug, Clone, PartialEq)]
pub enum MatValue {
    /// A numeric array (any numeric class), as f64, column-major, with its dimensions.
    Numeric {
        /// Dimensions.
        dims: Vec<usize>,
        /// Values, column-major.
        values: Vec<f64>,
    },
    /// A char array, as one string (rows concatenated).
    Char(String),
    /// A cell array, column-major.
    Cell {
        /// Dimensions.
        dims: Vec<usize>,
        /// Elements.
        items: Vec<MatValue>,
    },
    /// A struct array: for every element, its fields.
    Struct {
        /// Dimensions.
        dims: Vec<usize>,
        /// Field names, in file order.
        fields: Vec<String>,
        /// Elements, column-major; each holds one value per field in `fields` order.
        elements: Vec<Vec<MatValue>>,
    },
}

impl MatValue {
    /// The first number of a numeric array.
    pub fn scalar(&self) -> Option<f64> {
        match self {
            Self::Numeric { values, .. } => values.first().copied(),
            _ => None,
        }
    }

    /// The text of a char array.
    pub fn text(&self) -> Option<&str> {
        match self {
            Self::Char(text) => Some(text),
            _ => None,
        }
    }
}

/// Reads every top-level variable of the `.mat` file at `path`.
pub fn read(path: &Path) -> Result<BTreeMap<String, MatValue>> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io("cannot read", path, e))?;
    parse(&bytes).map_err(|reason| TrainError::Mat {
        path: path.to_path_buf(),
        reason,
    })
}

/// Parses the bytes of a level-5 `.mat` file (little-endian).
pub fn parse(bytes: &[u8]) -> std::result::Result<BTreeMap<String, MatValue>, String> {
    if bytes.len() < 128 {
        return Err("shorter than the 128-byte header".into());
    }
    // v7.3 files keep the 128-byte text header (with version 0x0200 and `IM`) in front of an
    // HDF5 file; a bare HDF5 file starts with its signature.
    let version = u16::from_le_bytes([bytes[124], bytes[125]]);
    if bytes.starts_with(b"\x89HDF") || (&bytes[126..128] == b"IM" && version == 0x0200) {
        return Err(
            "this is a MATLAB v7.3 (HDF5) file; save it with `-v7` or use the devkit's \
                    original files"
                .into(),
        );
    }
    if &bytes[126..128] != b"IM" {
        return Err("not a little-endian MATLAB level-5 file (no `IM` marker)".into());
    }
    let mut variables = BTreeMap::new();
    let mut cursor = Cursor::new(&bytes[128..]);
    while cursor.remaining() >= 8 {
        let (kind, data) = cursor.element()?;
        let inflated;
        let (kind, data) = if kind == MI_COMPRESSED {
            let mut out = Vec::new();
            flate2::read::ZlibDecoder::new(data)
                .take(MAX_INFLATED_BYTES + 1)
                .read_to_end(&mut out)
                .map_err(|e| format!("cannot inflate a compressed element: {e}"))?;
            if out.len() as u64 > MAX_INFLATED_BYTES {
                return Err(format!(
                    "a compressed element inflates to more than {MAX_INFLATED_BYTES} bytes"
                ));
            }
            inflated = out;
            let mut inner = Cursor::new(&inflated);
            let (kind, data) = inner.element()?;
            (kind, data.to_vec())
        } else {
            (kind, data.to_vec())
        };
        if kind == MI_MATRIX {
            let (name, value) = parse_matrix(&data, 0)?;
            variables.insert(name, value);
        }
    }
    Ok(variables)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.at)
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        let b = self
            .bytes
            .get(self.at..self.at + 4)
            .ok_or("truncated element tag")?;
        self.at += 4;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// One data element: its type and its bytes (small elements included).
    fn element(&mut self) -> std::result::Result<(u32, &'a [u8]), String> {
        let first = self.u32()?;
        if first >> 16 != 0 {
            // Small data element: type and size share the first word, data in the second.
            let (kind, size) = (first & 0xffff, (first >> 16) as usize);
            let start = self.at;
            self.at += 4;
            let data = self
                .bytes
                .get(start..start + size.min(4))
                .ok_or("truncated small element")?;
            return Ok((kind, data));
        }
        let size = self.u32()? as usize;
        let start = self.at;
        let data = self
            .bytes
            .get(start..start + size)
            .ok_or_else(|| format!("element of {size} bytes runs past the end"))?;
        self.at = start + size.div_ceil(8) * 8;
        if first == MI_COMPRESSED {
            self.at = start + size;
        }
        Ok((first, data))
    }
}

fn numbers(kind: u32, data: &[u8]) -> std::result::Result<Vec<f64>, String> {
    fn chunks<const N: usize>(data: &[u8], f: impl Fn([u8; N]) -> f64) -> Vec<f64> {
        data.chunks_exact(N)
            .map(|c| f(c.try_into().expect("chunk size")))
            .collect()
    }
    Ok(match kind {
        MI_INT8 => data.iter().map(|&b| b as i8 as f64).collect(),
        MI_UINT8 | MI_UTF8 => data.iter().map(|&b| b as f64).collect(),
        MI_INT16 => chunks::<2>(data, |b| i16::from_le_bytes(b) as f64),
        MI_UINT16 => chunks::<2>(data, |b| u16::from_le_bytes(b) as f64),
        MI_INT32 => chunks::<4>(data, |b| i32::from_le_bytes(b) as f64),
        MI_UINT32 => chunks::<4>(data, |b| u32::from_le_bytes(b) as f64),
        MI_SINGLE => chunks::<4>(data, |b| f32::from_le_bytes(b) as f64),
        MI_DOUBLE => chunks::<8>(data, f64::from_le_bytes),
        MI_INT64 => chunks::<8>(data, |b| i64::from_le_bytes(b) as f64),
        MI_UINT64 => chunks::<8>(data, |b| u64::from_le_bytes(b) as f64),
        other => return Err(format!("unsupported numeric data type {other}")),
    })
}

fn parse_matrix(data: &[u8], depth: usize) -> std::result::Result<(String, MatValue), String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "cells or structs nested deeper than {MAX_DEPTH} levels"
        ));
    }
    let mut cursor = Cursor::new(data);
    if data.is_empty() {
        // An empty matrix element (e.g. an empty cell).
        return Ok((
            String::new(),
            MatValue::Numeric {
                dims: vec![0, 0],
                values: vec![],
            },
        ));
    }
    let (_, flags) = cursor.element()?;
    let class = *flags.first().ok_or("missing array flags")?;
    let (_, dims) = cursor.element()?;
    let dims: Vec<usize> = numbers(MI_INT32, dims)?
        .into_iter()
        .map(|d| d as usize)
        .collect();
    let (_, name) = cursor.element()?;
    let name = String::from_utf8_lossy(name).into_owned();
    // Every element of a cell or struct takes at least 8 bytes, so a count beyond the data is
    // a corrupt header (and must not size an allocation).
    let count = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= data.len() || !matches!(class, MX_CELL | MX_STRUCT | MX_CHAR))
        .ok_or_else(|| format!("array `{name}` has impossible dimensions {dims:?}"))?;
    let value = match class {
        MX_CELL => {
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                let (kind, inner) = cursor.element()?;
                if kind != MI_MATRIX {
                    return Err(format!("cell element of type {kind}, expected a matrix"));
                }
                items.push(parse_matrix(inner, depth + 1)?.1);
            }
            MatValue::Cell { dims, items }
        }
        MX_STRUCT => {
            let (_, length) = cursor.element()?;
            let length = numbers(MI_INT32, length)?.first().copied().unwrap_or(0.0) as usize;
            let (_, names) = cursor.element()?;
            let fields: Vec<String> = names
                .chunks(length.max(1))
                .map(|n| {
                    String::from_utf8_lossy(n)
                        .trim_end_matches('\0')
                        .to_string()
                })
                .filter(|n| !n.is_empty())
                .collect();
            let mut elements = Vec::with_capacity(count);
            for _ in 0..count {
                let mut values = Vec::with_capacity(fields.len());
                for _ in &fields {
                    let (kind, inner) = cursor.element()?;
                    if kind != MI_MATRIX {
                        return Err(format!("struct field of type {kind}, expected a matrix"));
                    }
                    values.push(parse_matrix(inner, depth + 1)?.1);
                }
                elements.push(values);
            }
            MatValue::Struct {
                dims,
                fields,
                elements,
            }
        }
        MX_CHAR => {
            let (kind, chars) = cursor.element()?;
            let codes: Vec<f64> = if kind == MI_UTF8 {
                String::from_utf8_lossy(chars)
                    .chars()
                    .map(|c| f64::from(u32::from(c)))
                    .collect()
            } else {
                numbers(kind, chars)?
            };
            if codes.len() != count {
                return Err(format!(
                    "char array `{name}` of dimensions {dims:?} holds {} characters",
                    codes.len()
                ));
            }
            // Column-major: for a single row this is the text itself.
            let rows = dims.first().copied().unwrap_or(1).max(1);
            let cols = count / rows;
            let mut text = String::new();
            for r in 0..rows {
                for c in 0..cols {
                    if let Some(&code) = codes.get(c * rows + r) {
                        text.push(char::from_u32(code as u32).unwrap_or('\u{fffd}'));
                    }
                }
            }
            MatValue::Char(text)
        }
        6..=15 => {
            let (kind, real) = cursor.element()?;
            MatValue::Numeric {
                dims,
                values: numbers(kind, real)?,
            }
        }
        other => {
            return Err(format!(
                "variable `{name}` has unsupported array class {other}"
            ));
        }
    };
    Ok((name, value))
}

/// Writes `variables` as an uncompressed level-5 `.mat` file (numeric arrays as doubles, chars as
/// UTF-16). Used by tests and tools that need a devkit-style annotation file.
pub fn write(variables: &[(&str, MatValue)]) -> Vec<u8> {
    let mut out = vec![b' '; 116];
    out[..20].copy_from_slice(b"MATLAB 5.0 MAT-file ");
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(&0x0100u16.to_le_bytes());
    out.extend_from_slice(b"IM");
    for (name, value) in variables {
        write_matrix(&mut out, name, value);
    }
    out
}

fn write_element(out: &mut Vec<u8>, kind: u32, data: &[u8]) {
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(8) * 8, 0);
}

fn write_matrix(out: &mut Vec<u8>, name: &str, value: &MatValue) {
    let mut body = Vec::new();
    let (class, dims) = match value {
        MatValue::Numeric { dims, .. } => (6u8, dims.clone()),
        MatValue::Char(text) => (MX_CHAR, vec![1, text.encode_utf16().count()]),
        MatValue::Cell { dims, .. } => (MX_CELL, dims.clone()),
        MatValue::Struct { dims, .. } => (MX_STRUCT, dims.clone()),
    };
    write_element(&mut body, MI_UINT32, &[class, 0, 0, 0, 0, 0, 0, 0]);
    let dims_bytes: Vec<u8> = dims
        .iter()
        .flat_map(|&d| (d as i32).to_le_bytes())
        .collect();
    write_element(&mut body, MI_INT32, &dims_bytes);
    write_element(&mut body, MI_INT8, name.as_bytes());
    match value {
        MatValue::Numeric { values, .. } => {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            write_element(&mut body, MI_DOUBLE, &bytes);
        }
        MatValue::Char(text) => {
            let bytes: Vec<u8> = text.encode_utf16().flat_map(|c| c.to_le_bytes()).collect();
            write_element(&mut body, MI_UINT16, &bytes);
        }
        MatValue::Cell { items, .. } => {
            for item in items {
                write_matrix(&mut body, "", item);
            }
        }
        MatValue::Struct {
            fields, elements, ..
        } => {
            let length = fields.iter().map(|f| f.len() + 1).max().unwrap_or(1).max(8);
            write_element(&mut body, MI_INT32, &(length as i32).to_le_bytes());
            let mut names = vec![0u8; length * fields.len()];
            for (i, field) in fields.iter().enumerate() {
                names[i * length..i * length + field.len()].copy_from_slice(field.as_bytes());
            }
            write_element(&mut body, MI_INT8, &names);
            for element in elements {
                for field_value in element {
                    write_matrix(&mut body, "", field_value);
                }
            }
        }
    }
    write_element(out, MI_MATRIX, &body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_cell_char_and_numbers_round_trip() {
        let annotations = MatValue::Struct {
            dims: vec![1, 2],
            fields: vec!["class".into(), "fname".into()],
            elements: vec![
                vec![
                    MatValue::Numeric {
                        dims: vec![1, 1],
                        values: vec![3.0],
                    },
                    MatValue::Char("00001.jpg".into()),
                ],
                vec![
                    MatValue::Numeric {
                        dims: vec![1, 1],
                        values: vec![1.0],
                    },
                    MatValue::Char("00002.jpg".into()),
                ],
            ],
        };
        let names = MatValue::Cell {
            dims: vec![1, 2],
            items: vec![
                MatValue::Char("AM General Hummer SUV 2000".into()),
                MatValue::Char("Ä".into()),
            ],
        };
        let bytes = write(&[
            ("annotations", annotations.clone()),
            ("class_names", names.clone()),
        ]);
        let read = parse(&bytes).unwrap();
        assert_eq!(read["annotations"], annotations);
        assert_eq!(read["class_names"], names);
    }

    #[test]
    fn compressed_elements_are_inflated() {
        let bytes = write(&[(
            "x",
            MatValue::Numeric {
                dims: vec![1, 3],
                values: vec![1.0, 2.0, 3.5],
            },
        )]);
        let element = &bytes[128..];
        let mut compressed = Vec::new();
        {
            use std::io::Write;
            let mut encoder =
                flate2::write::ZlibEncoder::new(&mut compressed, flate2::Compression::default());
            encoder.write_all(element).unwrap();
            encoder.finish().unwrap();
        }
        let mut file = bytes[..128].to_vec();
        file.extend_from_slice(&MI_COMPRESSED.to_le_bytes());
        file.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
        file.extend_from_slice(&compressed);
        let read = parse(&file).unwrap();
        assert_eq!(read["x"].scalar(), Some(1.0));
    }

    #[test]
    fn v7_3_files_are_named_as_such() {
        // The header of a v7.3 file: version 0x0200, then the HDF5 file at offset 512.
        let mut bytes = write(&[]);
        bytes[124..126].copy_from_slice(&0x0200u16.to_le_bytes());
        bytes.resize(512, 0);
        bytes.extend_from_slice(b"\x89HDF\r\n\x1a\n");
        let err = parse(&bytes).unwrap_err();
        assert!(err.contains("v7.3"), "{err}");
    }

    #[test]
    fn impossible_dimensions_are_an_error_not_an_allocation() {
        let cell = MatValue::Cell {
            dims: vec![1, 1],
            items: vec![MatValue::Char("a".into())],
        };
        let mut bytes = write(&[("c", cell)]);
        // The dims element's data: 128 header + 8 matrix tag + 16 flags + 8 dims tag.
        bytes[160..168].copy_from_slice(&[0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff, 0x7f]);
        let err = parse(&bytes).unwrap_err();
        assert!(err.contains("impossible dimensions"), "{err}");
    }

    #[test]
    fn utf8_char_data_is_decoded() {
        // A 1×5 char array stored as miUTF8 (7 bytes for 5 characters).
        let mut body = Vec::new();
        write_element(&mut body, MI_UINT32, &[MX_CHAR, 0, 0, 0, 0, 0, 0, 0]);
        write_element(&mut body, MI_INT32, &[1, 0, 0, 0, 5, 0, 0, 0]);
        write_element(&mut body, MI_INT8, b"s");
        write_element(&mut body, MI_UTF8, "Škoda".as_bytes());
        let mut bytes = write(&[]);
        write_element(&mut bytes, MI_MATRIX, &body);
        assert_eq!(parse(&bytes).unwrap()["s"], MatValue::Char("Škoda".into()));
    }

    #[test]
    fn non_mat_bytes_are_an_error() {
        let err = parse(&[0u8; 200]).unwrap_err();
        assert!(err.contains("IM"), "{err}");
    }
}
