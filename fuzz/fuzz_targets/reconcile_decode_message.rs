//! Fuzzes the decoder of untrusted reconciliation messages: it must never
//! panic, and whatever it accepts must survive a re-encoding unchanged and be
//! safe to hand to a session.
//!
//! Run: `cargo +nightly fuzz run reconcile_decode_message` from the
//! repository root (`docs/design/fault-injection.md`, "Fuzzing").

#![no_main]

use chorus_reconcile::{ItemIndex, Message, Reconciler};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = Message::decode(data) else {
        return;
    };
    // Postcard accepts overlong varints, so compare messages, not bytes.
    let again = Message::decode(&message.encode()).expect("own encoding decodes");
    assert_eq!(again, message);
    let index = ItemIndex::from_items((0u8..32).map(|k| (vec![k; 3], [k; 16]))).expect("short keys");
    let mut session = Reconciler::responder();
    let _ = session.handle(&index, message);
});
