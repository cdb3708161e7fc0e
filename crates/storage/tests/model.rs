//! Random operation sequences against each backend and a `BTreeMap` model,
//! and redb reopen checks.

use chorus_storage::conformance::{check_everything, run_model, steps_from_bytes};
use chorus_storage::{KeyRange, MemoryStorage, OpenError, RedbStorage, Storage, WriteBatch};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn memory_storage_matches_the_model_on_random_sequences(
        data in proptest::collection::vec(any::<u8>(), 0..800)
    ) {
        run_model(&MemoryStorage::new(), &steps_from_bytes(&data));
    }

    #[test]
    fn redb_storage_matches_the_model_on_random_sequences(
        data in proptest::collection::vec(any::<u8>(), 0..800)
    ) {
        let store = RedbStorage::in_memory().expect("in-memory redb");
        run_model(&store, &steps_from_bytes(&data));
    }
}

proptest! {
    // Each commit fsyncs, so fewer cases for the file-backed runs.
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn redb_file_after_reopen_holds_exactly_what_the_model_holds(
        data in proptest::collection::vec(any::<u8>(), 0..400)
    ) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("store.redb");
        let model = {
            let store = RedbStorage::open(&path).expect("open redb");
            run_model(&store, &steps_from_bytes(&data))
        };
        let reopened = RedbStorage::open(&path).expect("reopen redb");
        check_everything(&reopened, &model);
    }
}

#[test]
fn decoded_sequences_exercise_commits_reads_and_refusals() {
    // Guards the decoder: a run of random bytes must produce every kind of
    // step, otherwise the property tests above would check little.
    let data: Vec<u8> = (0u32..4000).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let steps = steps_from_bytes(&data);
    use chorus_storage::conformance::ModelStep;
    let commits: Vec<&WriteBatch> = steps
        .iter()
        .filter_map(|step| match step {
            ModelStep::Commit(batch) => Some(batch),
            _ => None,
        })
        .collect();
    assert!(commits.iter().any(|batch| batch.validate().is_err()));
    assert!(commits.iter().filter(|batch| batch.validate().is_ok()).count() > 10);
    assert!(steps.iter().any(|step| matches!(step, ModelStep::Scan { .. })));
    assert!(steps.iter().any(|step| matches!(step, ModelStep::Get { .. })));
    assert!(steps.iter().any(|step| matches!(step, ModelStep::Everything)));
}

#[test]
fn redb_reopen_returns_the_same_contents_and_keyspaces() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("store.redb");
    let mut expected = Vec::new();
    {
        let store = RedbStorage::open(&path).expect("open redb");
        for round in 0u8..5 {
            let mut batch = WriteBatch::new();
            for space in ["meta", "ns/a/entries", "raft/log"] {
                batch.put(space, vec![round], vec![round; 100]);
            }
            batch.delete("raft/log", vec![0]);
            store.commit(batch).expect("commit");
        }
        for space in store.spaces().expect("spaces") {
            let page = store.scan(&space, &KeyRange::all(), 100).expect("scan");
            expected.push((space, page));
        }
    }
    let reopened = RedbStorage::open(&path).expect("reopen redb");
    let mut actual = Vec::new();
    for space in reopened.spaces().expect("spaces") {
        let page = reopened.scan(&space, &KeyRange::all(), 100).expect("scan");
        actual.push((space, page));
    }
    assert_eq!(actual, expected);
    assert_eq!(actual.len(), 3);
    assert_eq!(actual[2].1.entries.len(), 4, "the deleted log entry stays deleted");
}

#[test]
fn a_second_handle_on_an_open_redb_file_is_refused() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("store.redb");
    let _first = RedbStorage::open(&path).expect("open redb");
    assert!(matches!(RedbStorage::open(&path), Err(OpenError::AlreadyOpen)));
}

#[test]
fn a_file_that_is_not_a_database_is_refused_at_open() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("garbage.redb");
    std::fs::write(&path, vec![0xa5; 64 * 1024]).expect("write garbage");
    assert!(RedbStorage::open(&path).is_err());
}

#[test]
fn memory_crash_image_holds_every_committed_batch_and_no_injected_failure() {
    let store = MemoryStorage::new();
    let mut batch = WriteBatch::new();
    batch.put("s", b"k".to_vec(), b"v".to_vec());
    store.commit(batch.clone()).expect("commit");
    store.fail_next_commits(1).expect("inject");
    let mut failed = WriteBatch::new();
    failed.put("s", b"lost".to_vec(), b"v".to_vec());
    assert!(store.commit(failed).is_err());
    let image = store.crash_image().expect("crash image");
    assert_eq!(image.get("s", b"k").expect("get"), Some(b"v".to_vec()));
    assert_eq!(image.get("s", b"lost").expect("get"), None);
    image.commit(batch).expect("a restarted store accepts commits");
}
