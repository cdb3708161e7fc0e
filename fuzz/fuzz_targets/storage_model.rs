//! Random operation sequences against MemoryStorage and an in-memory redb
//! store, each compared read by read with a `BTreeMap` model (after redb's
//! own `fuzz_redb` target).
//!
//! Run: `cargo +nightly fuzz run storage_model` from the repository root
//! (`docs/design/fault-injection.md`, "Fuzzing").

#![no_main]

use chorus_storage::conformance::{run_model, steps_from_bytes};
use chorus_storage::{MemoryStorage, RedbStorage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let steps = steps_from_bytes(data);
    let memory_model = run_model(&MemoryStorage::new(), &steps);
    let Ok(redb) = RedbStorage::in_memory() else {
        panic!("an in-memory redb store must open");
    };
    let redb_model = run_model(&redb, &steps);
    // Both runs started empty and saw the same steps, so their models agree;
    // checking it guards the harness itself.
    chorus_storage::conformance::check_everything(&redb, &memory_model);
    drop(redb_model);
});
