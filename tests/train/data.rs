//! Image datasets on disk, in every layout `data::detect` knows: Stanford Cars (devkit /
//! torchvision, with the test labels in the root or in `devkit/`; Kaggle class folders and CSVs),
//! Hugging Face parquet files and ImageFolder. Each test writes its own tiny dataset (16×16
//! JPEGs, MAT files from the small MAT v5 writer below, parquet files from the `parquet` crate),
//! checks what was detected, and trains two steps on it; the bad inputs check their messages.

use std::io::Write;
use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use peanut_train::data::{
    ImageBatch, ImageBatcher, ImageDataset, ImageSource, Normalization, SampleRef, Transform,
};

use super::*;

/// Class names as the devkit spells them (one with a `/`, which the Kaggle copy turns into `-`
/// in its folder name, one not ASCII), in devkit order: not sorted.
const CLASSES: [&str; 3] = [
    "Ram C/V Cargo Van Minivan 2012",
    "Acura RL Sedan 2012",
    "Škoda Octavia Combi 2011",
];

/// `(file name, 1-based class)` of a split: `per_class` images per class, interleaved so that
/// file order and class order differ.
fn annotations(per_class: usize) -> Vec<(String, usize)> {
    (0..3 * per_class)
        .map(|i| (format!("{:05}.jpg", i + 1), [2, 3, 1][i % 3]))
        .collect()
}

/// The image file name a sample was read from.
fn file_name(source: &ImageSource) -> String {
    match source {
        ImageSource::File(path) => path.file_name().unwrap().to_string_lossy().into_owned(),
        other => panic!("expected a file, got {other:?}"),
    }
}

/// Trains two optimizer steps (6 images, batch 4, one epoch) and evaluates the test split.
fn train_two_steps(dataset: &ImageDataset, dir: &Path) {
    let config = tiny_config(Method::Peanut, 1);
    let device = Default::default();
    let trained = train::train_image(
        tiny_vit(dataset.classes.len()),
        dataset,
        &checked(&config),
        &run(dir, false),
        &device,
    )
    .unwrap();
    assert_eq!(train::last_checkpoint(dir), Some(1));
    let report = train::evaluate(
        &trained.model,
        &dataset.test,
        16,
        Normalization::VIT,
        4,
        &device,
    );
    assert_eq!(report.count, dataset.test.samples.len());
    assert!(report.loss.is_finite(), "{report:?}");
}

// ----------------------------------------------------------------------------------------------
// MAT v5, the way MATLAB writes the devkit's files: every variable a zlib-compressed element
// (optional here), small data elements for anything up to 4 bytes, integral doubles stored in a
// narrower integer type, 32-byte struct field names, and char data as UTF-8.

const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_DOUBLE: u32 = 9;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
const MI_UTF8: u32 = 16;

/// A MATLAB value, always a 1×n array.
enum Mat {
    /// A `uint8` scalar (the annotations' `class`).
    U8(u8),
    /// A `double` scalar (the bounding boxes).
    Double(f64),
    /// A char row.
    Text(String),
    /// A cell row.
    Cell(Vec<Mat>),
    /// A struct row: field names and, per element, one value per field.
    Struct(Vec<&'static str>, Vec<Vec<Mat>>),
}

fn mat_element(out: &mut Vec<u8>, kind: u32, data: &[u8]) {
    if !data.is_empty() && data.len() <= 4 {
        out.extend_from_slice(&(((data.len() as u32) << 16) | kind).to_le_bytes());
        out.extend_from_slice(data);
        out.resize(out.len() + 4 - data.len(), 0);
    } else {
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(8) * 8, 0);
    }
}

fn mat_matrix(name: &str, value: &Mat) -> Vec<u8> {
    let (class, length) = match value {
        Mat::U8(_) => (9u8, 1),
        Mat::Double(_) => (6, 1),
        Mat::Text(text) => (4, text.chars().count()),
        Mat::Cell(items) => (1, items.len()),
        Mat::Struct(_, elements) => (2, elements.len()),
    };
    let mut body = Vec::new();
    mat_element(&mut body, MI_UINT32, &[class, 0, 0, 0, 0, 0, 0, 0]);
    let dims: Vec<u8> = [1i32, length as i32]
        .iter()
        .flat_map(|d| d.to_le_bytes())
        .collect();
    mat_element(&mut body, MI_INT32, &dims);
    mat_element(&mut body, MI_INT8, name.as_bytes());
    match value {
        Mat::U8(v) => mat_element(&mut body, MI_UINT8, &[*v]),
        Mat::Double(v) if v.fract() == 0.0 && (0.0..65536.0).contains(v) => {
            mat_element(&mut body, MI_UINT16, &(*v as u16).to_le_bytes())
        }
        Mat::Double(v) => mat_element(&mut body, MI_DOUBLE, &v.to_le_bytes()),
        Mat::Text(text) => mat_element(&mut body, MI_UTF8, text.as_bytes()),
        Mat::Cell(items) => items
            .iter()
            .for_each(|item| body.extend(mat_matrix("", item))),
        Mat::Struct(fields, elements) => {
            mat_element(&mut body, MI_INT32, &32i32.to_le_bytes());
            let mut names = vec![0u8; 32 * fields.len()];
            for (i, field) in fields.iter().enumerate() {
                names[32 * i..32 * i + field.len()].copy_from_slice(field.as_bytes());
            }
            mat_element(&mut body, MI_INT8, &names);
            for element in elements {
                element
                    .iter()
                    .for_each(|value| body.extend(mat_matrix("", value)));
            }
        }
    }
    let mut out = Vec::new();
    mat_element(&mut out, MI_MATRIX, &body);
    out
}

fn write_mat(path: &Path, compressed: bool, variables: &[(&str, Mat)]) {
    let mut out =
        format!("MATLAB 5.0 MAT-file, Platform: GLNXA64, Created on: {compressed}").into_bytes();
    out.resize(116, b' ');
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&0x0100u16.to_le_bytes());
    out.extend_from_slice(b"IM");
    for (name, value) in variables {
        let matrix = mat_matrix(name, value);
        if compressed {
            let mut encoder =
                flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(&matrix).unwrap();
            let zipped = encoder.finish().unwrap();
            // Compressed elements are not padded.
            out.extend_from_slice(&MI_COMPRESSED.to_le_bytes());
            out.extend_from_slice(&(zipped.len() as u32).to_le_bytes());
            out.extend_from_slice(&zipped);
        } else {
            out.extend(matrix);
        }
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, out).unwrap();
}

/// A devkit `annotations` struct array (`bbox_x1 … bbox_y2`, `class`, `fname`).
fn annotations_mat(rows: &[(String, usize)]) -> Mat {
    let fields = vec!["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"];
    let elements = rows
        .iter()
        .map(|(name, class)| {
            vec![
                Mat::Double(1.0),
                Mat::Double(2.0),
                Mat::Double(15.0),
                Mat::Double(14.5),
                Mat::U8(*class as u8),
                Mat::Text(name.clone()),
            ]
        })
        .collect();
    Mat::Struct(fields, elements)
}

fn class_names_mat() -> Mat {
    Mat::Cell(CLASSES.iter().map(|c| Mat::Text(c.to_string())).collect())
}

/// Where the test labels go.
#[derive(Clone, Copy, PartialEq)]
enum TestLabels {
    Root,
    Devkit,
    Missing,
}

/// Writes the devkit / torchvision layout into `dir`: 2 train and 1 test image per class.
fn devkit(dir: &Path, compressed: bool, nested: bool, labels: TestLabels) {
    for (split, per_class) in [("cars_train", 2), ("cars_test", 1)] {
        let images = if nested {
            dir.join(split).join(split)
        } else {
            dir.join(split)
        };
        for (i, (name, class)) in annotations(per_class).iter().enumerate() {
            write_png(&images.join(name), class - 1, i);
        }
    }
    let mat = |name: &str, variable: &str, value| {
        write_mat(&dir.join(name), compressed, &[(variable, value)]);
    };
    mat("devkit/cars_meta.mat", "class_names", class_names_mat());
    mat(
        "devkit/cars_train_annos.mat",
        "annotations",
        annotations_mat(&annotations(2)),
    );
    // The unlabelled test annotations ship with the devkit too; they must not be used.
    mat(
        "devkit/cars_test_annos.mat",
        "annotations",
        Mat::Struct(vec!["fname"], vec![vec![Mat::Text("00001.jpg".into())]]),
    );
    let test_labels = match labels {
        TestLabels::Root => "cars_test_annos_withlabels.mat",
        TestLabels::Devkit => "devkit/cars_test_annos_withlabels.mat",
        TestLabels::Missing => return,
    };
    mat(test_labels, "annotations", annotations_mat(&annotations(1)));
}

/// Every sample's label is its annotation's 1-based class minus one, and names the class the
/// annotation means.
fn assert_devkit_labels(dataset: &ImageDataset) {
    assert_eq!(dataset.layout, Layout::CarsDevkit);
    assert_eq!(dataset.classes, CLASSES);
    for (split, per_class) in [(&dataset.train, 2), (&dataset.test, 1)] {
        assert_eq!(split.samples.len(), 3 * per_class);
        assert_eq!(split.skipped, 0);
        let expected = annotations(per_class);
        for sample in &split.samples {
            let name = file_name(&sample.source);
            let class = expected.iter().find(|(n, _)| *n == name).unwrap().1;
            assert_eq!(sample.label, class - 1, "{name}");
        }
    }
}

#[test]
fn devkit_layout_with_compressed_mats_and_test_labels_in_the_root_trains() {
    let root = temp_dir("devkit-root");
    devkit(&root.join("data"), true, false, TestLabels::Root);
    let dataset = data::detect(&root.join("data")).unwrap();
    assert_devkit_labels(&dataset);
    assert_eq!(dataset.root, root.join("data"));
    train_two_steps(&dataset, &root.join("run"));
}

#[test]
fn devkit_layout_one_level_down_with_test_labels_in_devkit_trains() {
    // As torchvision's `StanfordCars(root)` expects it: `root/stanford_cars/…`, here with the
    // archives' nested `cars_train/cars_train/` and uncompressed MAT files.
    let root = temp_dir("devkit-nested");
    devkit(
        &root.join("data/stanford_cars"),
        false,
        true,
        TestLabels::Devkit,
    );
    let dataset = data::detect(&root.join("data")).unwrap();
    assert_devkit_labels(&dataset);
    assert_eq!(dataset.root, root.join("data/stanford_cars"));
    train_two_steps(&dataset, &root.join("run"));
}

#[test]
fn devkit_annotations_of_missing_or_broken_images_are_skipped_and_counted() {
    let root = temp_dir("devkit-broken");
    devkit(&root, true, false, TestLabels::Root);
    std::fs::remove_file(root.join("cars_train/00001.jpg")).unwrap();
    std::fs::write(root.join("cars_train/00002.jpg"), b"\xff\xd8 truncated").unwrap();
    let dataset = data::detect(&root).unwrap();
    assert_eq!(dataset.train.samples.len(), 4);
    assert_eq!(dataset.train.skipped, 2);
    assert_eq!(dataset.test.skipped, 0);
}

#[test]
fn devkit_bad_inputs_name_the_file_and_the_problem() {
    let root = temp_dir("devkit-bad");
    let detect_err = |dir: &Path| data::detect(dir).unwrap_err().to_string();

    // No test labels anywhere: the message names both places and the file.
    let dir = root.join("no-test-labels");
    devkit(&dir, true, false, TestLabels::Missing);
    let err = detect_err(&dir);
    assert!(
        err.contains("cars_test_annos_withlabels.mat")
            && err.contains(&dir.display().to_string())
            && err.contains(&dir.join("devkit").display().to_string()),
        "{err}"
    );

    // No training annotations.
    let dir = root.join("no-train-annos");
    devkit(&dir, true, false, TestLabels::Root);
    std::fs::remove_file(dir.join("devkit/cars_train_annos.mat")).unwrap();
    let err = detect_err(&dir);
    assert!(
        err.contains("cars_train_annos.mat") && err.contains("missing"),
        "{err}"
    );

    // Corrupted MAT files: truncated, not a MAT file, a broken zlib stream, MATLAB v7.3.
    let dir = root.join("corrupt");
    devkit(&dir, true, false, TestLabels::Root);
    let annos = dir.join("devkit/cars_train_annos.mat");
    let bytes = std::fs::read(&annos).unwrap();
    std::fs::write(&annos, &bytes[..bytes.len() - 20]).unwrap();
    let err = detect_err(&dir);
    assert!(
        err.contains("malformed MAT file") && err.contains("cars_train_annos.mat"),
        "{err}"
    );
    std::fs::write(&annos, vec![b'x'; 300]).unwrap();
    let err = detect_err(&dir);
    assert!(
        err.contains("cars_train_annos.mat") && err.contains("IM"),
        "{err}"
    );
    let mut garbled = bytes.clone();
    garbled[140..160].fill(0xAB);
    std::fs::write(&annos, &garbled).unwrap();
    let err = detect_err(&dir);
    assert!(err.contains("cannot inflate"), "{err}");
    let mut v73 = bytes[..128].to_vec();
    v73[124..126].copy_from_slice(&0x0200u16.to_le_bytes());
    v73.extend_from_slice(&[0; 384]);
    v73.extend_from_slice(b"\x89HDF\r\n\x1a\n");
    std::fs::write(&annos, &v73).unwrap();
    let err = detect_err(&dir);
    assert!(err.contains("v7.3"), "{err}");

    // Impossible dimensions must be an error, not an allocation of terabytes.
    let mut huge = mat_matrix("annotations", &annotations_mat(&annotations(1)));
    huge[32..40].copy_from_slice(&[0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff, 0x7f]);
    let mut file = bytes[..128].to_vec();
    file.extend(huge);
    std::fs::write(&annos, &file).unwrap();
    let err = detect_err(&dir);
    assert!(err.contains("impossible dimensions"), "{err}");

    // The right file with the wrong content.
    write_mat(&annos, true, &[("class_names", class_names_mat())]);
    let err = detect_err(&dir);
    assert!(err.contains("struct array `annotations`"), "{err}");
    write_mat(
        &annos,
        true,
        &[(
            "annotations",
            Mat::Struct(vec!["fname"], vec![vec![Mat::Text("00001.jpg".into())]]),
        )],
    );
    let err = detect_err(&dir);
    assert!(
        err.contains("`fname` and `class`") && err.contains("withlabels"),
        "{err}"
    );
    write_mat(
        &dir.join("devkit/cars_meta.mat"),
        false,
        &[("names", class_names_mat())],
    );
    let err = detect_err(&dir);
    assert!(
        err.contains("cars_meta.mat") && err.contains("class_names"),
        "{err}"
    );

    // Class ids are 1-based: 0 and 4 (of 3 classes) are out of range.
    for class in [0, 4] {
        let dir = root.join(format!("label-{class}"));
        devkit(&dir, true, false, TestLabels::Devkit);
        let mut rows = annotations(1);
        rows[1].1 = class;
        write_mat(
            &dir.join("devkit/cars_test_annos_withlabels.mat"),
            true,
            &[("annotations", annotations_mat(&rows))],
        );
        let err = detect_err(&dir);
        assert!(
            err.contains(&format!("`00002.jpg` has class {class}, outside 1..=3"))
                && err.contains("cars_test_annos_withlabels.mat"),
            "{err}"
        );
    }
}

// ----------------------------------------------------------------------------------------------
// Kaggle: `car_data/car_data/{train,test}/<class>/*.jpg`, `anno_{train,test}.csv`, `names.csv`.

fn kaggle(dir: &Path, csvs: bool) {
    for (split, per_class) in [("train", 2), ("test", 1)] {
        let mut csv = String::new();
        for (i, (name, class)) in annotations(per_class).iter().enumerate() {
            let folder = CLASSES[class - 1].replace('/', "-");
            write_png(
                &dir.join("car_data/car_data")
                    .join(split)
                    .join(folder)
                    .join(name),
                class - 1,
                i,
            );
            csv += &format!("{name},1,2,15,14,{class}\n");
        }
        if csvs {
            std::fs::write(dir.join(format!("anno_{split}.csv")), csv).unwrap();
        }
    }
    if csvs {
        std::fs::write(dir.join("names.csv"), CLASSES.join("\n") + "\n").unwrap();
    }
}

#[test]
fn kaggle_layout_takes_labels_from_its_csvs_and_trains() {
    let root = temp_dir("kaggle");
    kaggle(&root.join("data"), true);
    let dataset = data::detect(&root.join("data")).unwrap();
    assert_eq!(dataset.layout, Layout::CarsKaggle);
    // names.csv order, not the folders' sorted order.
    assert_eq!(dataset.classes, CLASSES);
    for (split, per_class) in [(&dataset.train, 2), (&dataset.test, 1)] {
        assert_eq!(split.samples.len(), 3 * per_class);
        assert_eq!(split.skipped, 0);
        let expected = annotations(per_class);
        for sample in &split.samples {
            let name = file_name(&sample.source);
            let class = expected.iter().find(|(n, _)| *n == name).unwrap().1;
            assert_eq!(sample.label, class - 1, "{name}");
        }
    }
    train_two_steps(&dataset, &root.join("run"));
}

#[test]
fn kaggle_layout_without_csvs_labels_by_sorted_folder() {
    let root = temp_dir("kaggle-folders");
    kaggle(&root, false);
    let dataset = data::detect(&root).unwrap();
    assert_eq!(dataset.layout, Layout::CarsKaggle);
    let folders = [
        "Acura RL Sedan 2012",
        "Ram C-V Cargo Van Minivan 2012",
        "Škoda Octavia Combi 2011",
    ];
    assert_eq!(dataset.classes, folders);
    for sample in &dataset.train.samples {
        let ImageSource::File(path) = &sample.source else {
            panic!()
        };
        let folder = path.parent().unwrap().file_name().unwrap();
        assert_eq!(folder.to_string_lossy(), folders[sample.label]);
    }
}

#[test]
fn kaggle_csv_naming_a_missing_image_counts_it_as_skipped() {
    let root = temp_dir("kaggle-missing");
    kaggle(&root, true);
    let train_csv = root.join("anno_train.csv");
    let mut csv = std::fs::read_to_string(&train_csv).unwrap();
    csv += "09999.jpg,1,2,15,14,1\n";
    std::fs::write(&train_csv, csv).unwrap();
    std::fs::write(
        root.join("car_data/car_data/test/Acura RL Sedan 2012/broken.jpg"),
        b"not a jpeg",
    )
    .unwrap();
    let dataset = data::detect(&root).unwrap();
    assert_eq!(dataset.train.samples.len(), 6);
    assert_eq!(dataset.train.skipped, 1);
    assert_eq!(dataset.test.samples.len(), 3);
    assert_eq!(dataset.test.skipped, 1);

    // A class outside names.csv is an error naming the file, the line and the class.
    std::fs::write(&train_csv, "00001.jpg,1,2,15,14,2\n00002.jpg,1,2,15,14,7\n").unwrap();
    let err = data::detect(&root).unwrap_err().to_string();
    assert!(
        err.contains("anno_train.csv") && err.contains("line 2: class `7` is not in 1..=3"),
        "{err}"
    );
}

// ----------------------------------------------------------------------------------------------
// Hugging Face parquet: `Multimodal-Fatima/StanfordCars_{train,test}` snapshots, each with
// `data/<split>-0000x-of-0000n.parquet`: `image` {bytes, path}, `label` (ClassLabel, int64),
// more columns, and the features (with the class names) in the `huggingface` metadata.

fn jpeg_bytes(class: usize, index: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(test_image(class, index))
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    bytes
}

/// One row: the image bytes (`None`: a null cell), the label.
type Row = (Option<Vec<u8>>, i64);

fn hf_metadata() -> KeyValue {
    let features = serde_json::json!({"info": {"features": {
        "image": {"_type": "Image"},
        "label": {"names": CLASSES, "_type": "ClassLabel"},
        "id": {"dtype": "int64", "_type": "Value"},
        "blip_caption": {"dtype": "string", "_type": "Value"},
    }}});
    KeyValue::new("huggingface".into(), features.to_string())
}

fn write_hf_parquet(path: &Path, rows: &[Row]) {
    write_parquet(path, rows, Some(vec![hf_metadata()]));
}

/// Like [`write_hf_parquet`], with the key-value metadata given (`None`: no class names).
fn write_parquet(path: &Path, rows: &[Row], metadata: Option<Vec<KeyValue>>) {
    let schema = parse_message_type(
        "message schema {
            optional group image {
                optional binary bytes;
                optional binary path (STRING);
            }
            optional int64 label;
            optional int64 id;
            optional binary blip_caption (STRING);
        }",
    )
    .unwrap();
    // Snappy, as `datasets` writes them.
    let properties = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_key_value_metadata(metadata)
        .build();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer =
        SerializedFileWriter::new(file, Arc::new(schema), Arc::new(properties)).unwrap();
    let mut group = writer.next_row_group().unwrap();
    let strings = |values: Vec<String>| -> Vec<ByteArray> {
        values
            .into_iter()
            .map(|v| ByteArray::from(v.as_str()))
            .collect()
    };
    // image.bytes: definition level 2 when present, 1 for a null inside the struct.
    let bytes: Vec<ByteArray> = rows
        .iter()
        .filter_map(|(b, _)| b.clone().map(ByteArray::from))
        .collect();
    let levels: Vec<i16> = rows
        .iter()
        .map(|(b, _)| if b.is_some() { 2 } else { 1 })
        .collect();
    let mut column = group.next_column().unwrap().unwrap();
    column
        .typed::<ByteArrayType>()
        .write_batch(&bytes, Some(&levels), None)
        .unwrap();
    column.close().unwrap();
    let paths = strings((0..rows.len()).map(|i| format!("{i:05}.jpg")).collect());
    let mut column = group.next_column().unwrap().unwrap();
    column
        .typed::<ByteArrayType>()
        .write_batch(&paths, Some(&vec![2; rows.len()]), None)
        .unwrap();
    column.close().unwrap();
    for values in [
        rows.iter().map(|(_, label)| *label).collect::<Vec<i64>>(),
        (0..rows.len() as i64).collect(),
    ] {
        let mut column = group.next_column().unwrap().unwrap();
        column
            .typed::<Int64Type>()
            .write_batch(&values, Some(&vec![1; rows.len()]), None)
            .unwrap();
        column.close().unwrap();
    }
    let captions = strings(vec!["a photo of a car".to_string(); rows.len()]);
    let mut column = group.next_column().unwrap().unwrap();
    column
        .typed::<ByteArrayType>()
        .write_batch(&captions, Some(&vec![1; rows.len()]), None)
        .unwrap();
    column.close().unwrap();
    group.close().unwrap();
    writer.close().unwrap();
}

/// `per_class` rows per class, labels 0-based, interleaved.
fn hf_rows(per_class: usize) -> Vec<Row> {
    (0..3 * per_class)
        .map(|i| (Some(jpeg_bytes(i % 3, i)), ((i + 1) % 3) as i64))
        .collect()
}

fn hf_snapshots(root: &Path) {
    let train = hf_rows(2);
    write_hf_parquet(
        &root.join("StanfordCars_train/data/train-00000-of-00002.parquet"),
        &train[..4],
    );
    write_hf_parquet(
        &root.join("StanfordCars_train/data/train-00001-of-00002.parquet"),
        &train[4..],
    );
    write_hf_parquet(
        &root.join("StanfordCars_test/data/test-00000-of-00001.parquet"),
        &hf_rows(1),
    );
}

#[test]
fn hugging_face_parquet_snapshots_train() {
    let root = temp_dir("parquet");
    hf_snapshots(&root.join("data"));
    let dataset = data::detect(&root.join("data")).unwrap();
    assert_eq!(dataset.layout, Layout::Parquet);
    assert_eq!(dataset.classes, CLASSES);
    assert_eq!(dataset.train.samples.len(), 6);
    assert_eq!(dataset.test.samples.len(), 3);
    assert_eq!((dataset.train.skipped, dataset.test.skipped), (0, 0));
    // Shards are read in order; each row keeps its own label.
    let labels: Vec<usize> = dataset.train.samples.iter().map(|s| s.label).collect();
    assert_eq!(labels, [1, 2, 0, 1, 2, 0]);
    train_two_steps(&dataset, &root.join("run"));
}

#[test]
fn parquet_rows_without_a_readable_image_or_a_label_are_skipped_and_counted() {
    let root = temp_dir("parquet-skip");
    hf_snapshots(&root);
    let mut rows = hf_rows(1);
    rows[0].0 = None;
    rows[1].0 = Some(b"not an image".to_vec());
    rows[2].1 = -1;
    rows.extend(hf_rows(1));
    write_hf_parquet(
        &root.join("StanfordCars_test/data/test-00000-of-00001.parquet"),
        &rows,
    );
    let dataset = data::detect(&root).unwrap();
    assert_eq!(dataset.test.samples.len(), 3);
    assert_eq!(dataset.test.skipped, 3);
}

#[test]
fn parquet_with_the_wrong_schema_or_one_split_is_an_error() {
    let root = temp_dir("parquet-bad");
    hf_snapshots(&root);
    // Text and label, no image column.
    let test = root.join("StanfordCars_test/data/test-00000-of-00001.parquet");
    let schema = parse_message_type(
        "message schema { optional binary text (STRING); optional int64 label; }",
    )
    .unwrap();
    let file = std::fs::File::create(&test).unwrap();
    let mut writer = SerializedFileWriter::new(file, Arc::new(schema), Default::default()).unwrap();
    let mut group = writer.next_row_group().unwrap();
    let mut column = group.next_column().unwrap().unwrap();
    column
        .typed::<ByteArrayType>()
        .write_batch(&[ByteArray::from("a car")], Some(&[1]), None)
        .unwrap();
    column.close().unwrap();
    let mut column = group.next_column().unwrap().unwrap();
    column
        .typed::<Int64Type>()
        .write_batch(&[0], Some(&[1]), None)
        .unwrap();
    column.close().unwrap();
    group.close().unwrap();
    writer.close().unwrap();
    let err = data::detect(&root).unwrap_err().to_string();
    assert!(
        err.contains("test-00000-of-00001.parquet")
            && err.contains("no image column")
            && err.contains("text (BYTE_ARRAY)"),
        "{err}"
    );

    // An image column but no label column.
    let schema = parse_message_type(
        "message schema { optional group image { optional binary bytes; } optional int64 id; }",
    )
    .unwrap();
    let file = std::fs::File::create(&test).unwrap();
    let mut writer = SerializedFileWriter::new(file, Arc::new(schema), Default::default()).unwrap();
    let mut group = writer.next_row_group().unwrap();
    let mut column = group.next_column().unwrap().unwrap();
    column
        .typed::<ByteArrayType>()
        .write_batch(&[ByteArray::from(jpeg_bytes(0, 0))], Some(&[2]), None)
        .unwrap();
    column.close().unwrap();
    let mut column = group.next_column().unwrap().unwrap();
    column
        .typed::<Int64Type>()
        .write_batch(&[0], Some(&[1]), None)
        .unwrap();
    column.close().unwrap();
    group.close().unwrap();
    writer.close().unwrap();
    let err = data::detect(&root).unwrap_err().to_string();
    assert!(
        err.contains("no integer label column") && err.contains("image.bytes"),
        "{err}"
    );

    // Not a parquet file at all.
    std::fs::write(&test, b"PAR1 but not really").unwrap();
    let err = data::detect(&root).unwrap_err().to_string();
    assert!(
        err.contains("cannot read parquet file") && err.contains("test-00000-of-00001.parquet"),
        "{err}"
    );

    // Only a training split.
    std::fs::remove_dir_all(root.join("StanfordCars_test")).unwrap();
    let err = data::detect(&root).unwrap_err().to_string();
    assert!(
        err.contains("both splits") && err.contains("train-00000-of-00002.parquet"),
        "{err}"
    );

    // A label beyond the ClassLabel names.
    write_hf_parquet(
        &root.join("StanfordCars_test/data/test-00000-of-00001.parquet"),
        &[(Some(jpeg_bytes(0, 0)), 3)],
    );
    let err = data::detect(&root).unwrap_err().to_string();
    assert!(
        err.contains("label 3 is outside the 3 class names"),
        "{err}"
    );
}

// ----------------------------------------------------------------------------------------------
// ImageFolder and directories that hold no dataset.

#[test]
fn image_folder_with_val_split_trains() {
    let root = temp_dir("folder-val");
    image_folder(&root.join("data"), 2);
    std::fs::rename(root.join("data/test"), root.join("data/val")).unwrap();
    let dataset = data::detect(&root.join("data")).unwrap();
    assert_eq!(dataset.layout, Layout::ImageFolder);
    assert_eq!(dataset.classes, ["blue", "green", "red"]);
    assert_eq!(
        (dataset.train.samples.len(), dataset.test.samples.len()),
        (6, 6)
    );
    train_two_steps(&dataset, &root.join("run"));
}

#[test]
fn missing_or_unknown_data_dirs_name_the_path_and_every_layout() {
    let root = temp_dir("no-layout");
    let layouts = ["devkit", "Kaggle", "parquet", "ImageFolder"];
    let missing = root.join("does-not-exist");
    let err = data::detect(&missing).unwrap_err().to_string();
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(layouts.iter().all(|l| err.contains(l)), "{err}");

    let unknown = root.join("photos");
    write_png(&unknown.join("holiday/1.png"), 0, 0);
    std::fs::write(unknown.join("notes.txt"), "not a dataset").unwrap();
    let err = data::detect(&unknown).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("no dataset found at `{}`", unknown.display())),
        "{err}"
    );
    assert!(layouts.iter().all(|l| err.contains(l)), "{err}");

    // Class folders that differ between the splits.
    let folder = root.join("folder");
    image_folder(&folder, 1);
    std::fs::rename(folder.join("test/red"), folder.join("test/purple")).unwrap();
    let err = data::detect(&folder).unwrap_err().to_string();
    assert!(err.contains("class folders differ"), "{err}");
}

#[test]
fn a_split_with_only_unreadable_images_is_an_error_with_the_count() {
    let root = temp_dir("all-broken");
    image_folder(&root, 1);
    for class in ["red", "green", "blue"] {
        std::fs::write(root.join(format!("test/{class}/0.png")), b"broken").unwrap();
    }
    let err = data::detect(&root).unwrap_err().to_string();
    assert!(
        err.contains("the test split") && err.contains("no usable example (3 unreadable)"),
        "{err}"
    );
}

// ----------------------------------------------------------------------------------------------
// Images that read but do not decode, and images too large to decode.

/// Rewrites the PNG at `path` to stop a few bytes into its pixel data: its header still reads
/// (so the up-front check keeps it), decoding it fails.
fn truncate_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    let idat = bytes.windows(4).position(|w| w == b"IDAT").unwrap();
    std::fs::write(path, &bytes[..idat + 8]).unwrap();
}

#[test]
fn an_undecodable_image_alone_in_a_batch_is_skipped_in_training_validation_and_eval() {
    let root = temp_dir("truncated");
    image_folder(&root, 2);
    write_png(&root.join("train/red/9.png"), 0, 9);
    truncate_png(&root.join("train/red/9.png"));
    write_png(&root.join("test/green/9.png"), 1, 9);
    truncate_png(&root.join("test/green/9.png"));
    let dataset = data::detect(&root).unwrap();
    // Their headers read: both are kept until a batch decodes them.
    assert_eq!((dataset.train.skipped, dataset.test.skipped), (0, 0));
    assert_eq!(dataset.train.samples.len(), 7);

    // A batch holding only the broken image gets one stand-in example instead of panicking.
    let samples: Arc<[_]> = dataset.train.samples.clone().into();
    let broken = samples
        .iter()
        .position(|s| file_name(&s.source) == "9.png")
        .unwrap();
    let batcher = ImageBatcher::new(samples, Transform::eval(16), Normalization::VIT, 3, 0);
    let batch: ImageBatch<TrainBackend> = Batcher::batch(
        &batcher,
        vec![SampleRef {
            index: broken,
            pass: 0,
        }],
        &Default::default(),
    );
    assert_eq!(batch.images.dims(), [1, 3, 16, 16]);
    assert_eq!((batcher.skipped(), batcher.stand_ins()), (1, 1));

    // Training and validation in batches of one: the broken images are skipped and counted.
    let config = ImageTrainConfig {
        batch_size: 1,
        ..tiny_config(Method::Peanut, 1)
    };
    let device = Default::default();
    let trained = train::train_image(
        tiny_vit(3),
        &dataset,
        &checked(&config),
        // Apart from the data: a run directory inside the dataset is refused.
        &run(&temp_dir("truncated-run"), false),
        &device,
    )
    .unwrap();
    // One epoch: each broken image once, the test split's in validation.
    assert_eq!(
        (trained.skipped_images, trained.skipped_valid_images),
        (1, 1)
    );
    let report = train::evaluate(
        &trained.model,
        &dataset.test,
        16,
        Normalization::VIT,
        1,
        &device,
    );
    assert_eq!((report.count, report.skipped), (6, 1));
    assert!(report.loss.is_finite(), "{report:?}");
}

/// CRC-32 (IEEE) as PNG chunks use it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A small valid PNG whose header declares `width × height` pixels (its data holds 16×16).
fn png_declaring(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    test_image(0, 0)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    // Signature (8), IHDR length and type (8), then width and height; the CRC covers type
    // and data (bytes 12..29) and follows them.
    assert_eq!(&bytes[12..16], b"IHDR");
    bytes[16..20].copy_from_slice(&width.to_be_bytes());
    bytes[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

#[test]
fn images_declaring_huge_or_degenerate_sizes_are_refused_before_decoding() {
    // The 16×16 original decodes; the header patch itself is sound.
    let fine = ImageSource::Encoded(png_declaring(16, 16).into());
    assert!(fine.header_ok() && fine.decode().is_ok());
    for (width, height, expected) in [
        (20_000, 20_000, "20000×20000 pixels"),
        (100_000, 16, "differ by more than"),
    ] {
        let source = ImageSource::Encoded(png_declaring(width, height).into());
        assert!(!source.header_ok(), "{width}×{height}");
        let err = source.decode().unwrap_err();
        assert!(err.contains(expected), "{err}");
    }
    let gray = ImageSource::Gray {
        width: 20_000,
        height: 20_000,
        pixels: vec![0u8; 16].into(),
    };
    assert!(!gray.header_ok() && gray.decode().is_err());

    // In a dataset: skipped and counted up front.
    let root = temp_dir("huge-image");
    image_folder(&root, 1);
    std::fs::write(
        root.join("train/red/huge.png"),
        png_declaring(20_000, 20_000),
    )
    .unwrap();
    let dataset = data::detect(&root).unwrap();
    assert_eq!((dataset.train.samples.len(), dataset.train.skipped), (3, 1));
}

#[test]
fn csv_files_with_a_byte_order_mark_read() {
    let dir = temp_dir("kaggle-bom");
    kaggle(&dir, true);
    for name in ["names.csv", "anno_train.csv"] {
        let path = dir.join(name);
        let mut bytes = b"\xEF\xBB\xBF".to_vec();
        bytes.extend(std::fs::read(&path).unwrap());
        std::fs::write(&path, bytes).unwrap();
    }
    let dataset = data::detect(&dir).unwrap();
    assert_eq!(dataset.classes, CLASSES);
    assert_eq!((dataset.train.samples.len(), dataset.train.skipped), (6, 0));
}

#[test]
fn parquet_without_class_names_and_a_huge_label_is_an_error_not_an_allocation() {
    let root = temp_dir("parquet-huge-label");
    let mut rows = hf_rows(1);
    write_parquet(&root.join("test.parquet"), &rows, None);
    rows[1].1 = 5_000_000_000;
    write_parquet(&root.join("train.parquet"), &rows, None);
    let err = data::detect(&root).unwrap_err().to_string();
    assert!(
        err.contains("label 5000000000 without class names"),
        "{err}"
    );
    // Small labels without names still read, named by number.
    rows[1].1 = 2;
    write_parquet(&root.join("train.parquet"), &rows, None);
    assert_eq!(data::detect(&root).unwrap().classes, ["0", "1", "2"]);
}
