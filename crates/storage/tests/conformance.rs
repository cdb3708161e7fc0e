//! Every conformance property against every backend, and against the group
//! committer in front of each.

use std::sync::Arc;

use chorus_storage::{GroupCommitter, MemoryStorage, RedbStorage};

/// A redb store in a temporary directory that lives as long as the store.
struct TempRedb {
    store: RedbStorage,
    _dir: tempfile::TempDir,
}

fn temp_redb() -> TempRedb {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = RedbStorage::open(dir.path().join("store.redb")).expect("open redb");
    TempRedb { store, _dir: dir }
}

macro_rules! conformance_tests {
    ($($property:ident),* $(,)?) => {
        mod memory {
            $(
                #[test]
                fn $property() {
                    chorus_storage::conformance::$property(&chorus_storage::MemoryStorage::new());
                }
            )*
        }

        mod redb_file {
            $(
                #[test]
                fn $property() {
                    let redb = super::temp_redb();
                    chorus_storage::conformance::$property(&redb.store);
                }
            )*
        }

        mod group_commit_over_memory {
            $(
                #[test]
                fn $property() {
                    let store = std::sync::Arc::new(chorus_storage::MemoryStorage::new());
                    let group = chorus_storage::GroupCommitter::start(store).expect("writer thread");
                    chorus_storage::conformance::$property(&group);
                }
            )*
        }

        mod group_commit_over_redb {
            $(
                #[test]
                fn $property() {
                    let redb = super::temp_redb();
                    let dir = redb._dir;
                    let group = chorus_storage::GroupCommitter::start(std::sync::Arc::new(redb.store))
                        .expect("writer thread");
                    chorus_storage::conformance::$property(&group);
                    drop(group);
                    drop(dir);
                }
            )*
        }
    };
}

conformance_tests!(
    get_of_a_missing_key_returns_none,
    put_then_get_returns_the_value,
    later_ops_in_a_batch_override_earlier_ones,
    delete_removes_only_that_key,
    delete_range_removes_exactly_the_keys_in_range,
    scan_returns_keys_in_lexicographic_byte_order,
    scan_respects_inclusive_exclusive_and_empty_bounds,
    scan_pages_cover_the_range_exactly_once,
    scan_with_zero_limit_returns_the_first_key_as_resume,
    scan_never_returns_more_than_the_page_limit,
    keyspaces_are_isolated,
    spaces_lists_exactly_the_non_empty_keyspaces,
    invalid_batch_is_refused_and_changes_nothing,
    invalid_read_arguments_are_refused,
    empty_batch_commits_and_changes_nothing,
    empty_keys_and_values_are_stored,
    large_values_round_trip,
    for_each_visits_every_entry_in_order_and_stops_on_break,
    concurrent_commits_from_many_threads_are_all_visible,
    readers_never_observe_part_of_a_batch,
);

#[test]
fn run_all_passes_on_the_in_memory_redb_backend() {
    chorus_storage::conformance::run_all(|| RedbStorage::in_memory().expect("in-memory redb"));
}

#[test]
fn run_all_passes_on_memory_storage_behind_an_arc() {
    chorus_storage::conformance::run_all(|| Arc::new(MemoryStorage::new()));
}

#[test]
fn group_committer_is_usable_as_a_shared_dyn_storage() {
    let group = GroupCommitter::start(Arc::new(MemoryStorage::new())).expect("writer thread");
    let shared: Arc<dyn chorus_storage::Storage> = Arc::new(group);
    chorus_storage::conformance::concurrent_commits_from_many_threads_are_all_visible(&*shared);
}
