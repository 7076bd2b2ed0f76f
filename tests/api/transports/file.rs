//! The file transport: one `.eml` per outbox id, written atomically.

use std::path::{Path, PathBuf};

use scimsync::email::{Transport, hint};

use super::email;

/// A fresh directory under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        Scratch(
            std::env::temp_dir().join(format!("emailmod-{name}-{}-{nanos}", std::process::id())),
        )
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("dir exists")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn transport(dir: &Path) -> Transport {
    Transport::from_url(&format!("file://{}", dir.display())).expect("transport")
}

#[tokio::test]
async fn the_same_id_written_twice_leaves_one_file_with_the_last_version() {
    let scratch = Scratch::new("twice");
    let t = transport(&scratch.0);
    let mut e = email("ada@example.com");

    let said = t.send(&e).await.expect("first");
    e.subject = "Second version".into();
    t.send(&e).await.expect("second");

    assert_eq!(entries(&scratch.0), [format!("{}.eml", e.id)]);
    assert!(said.contains(&format!("{}.eml", e.id)), "{said}");
    let raw = std::fs::read_to_string(scratch.0.join(format!("{}.eml", e.id))).expect("read");
    assert!(raw.contains("Subject: Second version"), "{raw}");
    assert!(raw.contains(&format!("Message-ID: <{}@scimsync>", e.id)));
}

#[tokio::test]
async fn concurrent_writes_of_one_id_leave_one_whole_file() {
    let scratch = Scratch::new("race");
    let t = std::sync::Arc::new(transport(&scratch.0));
    let e = email("ada@example.com");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (t, e) = (t.clone(), e.clone());
        tasks.push(tokio::spawn(async move { t.send(&e).await }));
    }
    for task in tasks {
        task.await.expect("joined").expect("written");
    }

    assert_eq!(entries(&scratch.0), [format!("{}.eml", e.id)]);
    let raw = std::fs::read_to_string(scratch.0.join(format!("{}.eml", e.id))).expect("read");
    assert!(
        raw.trim_end().ends_with("--"),
        "a whole multipart message: {raw}"
    );
}

#[tokio::test]
async fn missing_directories_are_created() {
    let scratch = Scratch::new("nested");
    let dir = scratch.0.join("a/b/mail");
    let e = email("ada@example.com");

    transport(&dir).send(&e).await.expect("written");

    assert_eq!(entries(&dir), [format!("{}.eml", e.id)]);
}

#[tokio::test]
async fn an_id_that_is_not_a_plain_token_writes_nothing() {
    let scratch = Scratch::new("badid");
    let mut e = email("ada@example.com");
    e.id = "../escape".into();

    let err = transport(&scratch.0).send(&e).await.expect_err("refused");

    assert!(!err.is_transient(), "{err}");
    assert!(!scratch.0.exists() || entries(&scratch.0).is_empty());
}

#[tokio::test]
async fn an_unusable_directory_is_transient() {
    let scratch = Scratch::new("blocked");
    std::fs::create_dir_all(&scratch.0).expect("mkdir");
    let file = scratch.0.join("not-a-dir");
    std::fs::write(&file, b"x").expect("write");
    let t = transport(&file.join("mail"));

    let err = t
        .send(&email("ada@example.com"))
        .await
        .expect_err("blocked");

    assert!(err.is_transient(), "{err}");
    assert!(err.reason().contains("not-a-dir"), "{err}");
    assert_eq!(hint(&err, &t), None);
}
