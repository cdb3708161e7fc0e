//! Write batches: the unit of atomicity.

use crate::error::InvalidInput;
use crate::range::KeyRange;

/// Longest keyspace name, in bytes. Keyspace names become redb table names;
/// the bound keeps the table directory small and names printable in logs.
pub const SPACE_NAME_BYTES_MAX: usize = 200;

/// Largest key, in bytes. The product limit is 4 KiB per user key;
/// the margin leaves room for the record prefixes the core adds.
pub const STORE_KEY_BYTES_MAX: usize = 16 * 1024;

/// Largest value, in bytes. The product default is 1 MiB per user value
/// (configurable); anything larger (Raft snapshots) must be chunked by the caller.
pub const STORE_VALUE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Most operations in one batch. Bounds the memory and the time one commit
/// can hold the single writer.
pub const BATCH_OPS_MAX: usize = 65_536;

/// Most payload bytes in one batch (see [`WriteBatch::payload_bytes`]).
pub const BATCH_BYTES_MAX: usize = 64 * 1024 * 1024;

/// One write operation on one keyspace. Named for the batch it belongs to,
/// so it is not confused with the core's CRDT operation (`chorus_core::Op`)
/// or its persistence record (`chorus_core::persist::StoreOp`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchOp {
    /// Sets `key` to `value` in `space`, replacing any earlier value.
    Put {
        /// Keyspace name.
        space: String,
        /// Key bytes.
        key: Vec<u8>,
        /// Value bytes.
        value: Vec<u8>,
    },
    /// Removes `key` from `space`; removing an absent key is not an error.
    Delete {
        /// Keyspace name.
        space: String,
        /// Key bytes.
        key: Vec<u8>,
    },
    /// Removes every key of `space` inside `range`. Raft log truncation and
    /// purging, and dropping a namespace, are range deletes; without this op a
    /// caller would have to read the keys first and race with other writers.
    DeleteRange {
        /// Keyspace name.
        space: String,
        /// Keys to remove.
        range: KeyRange,
    },
}

impl BatchOp {
    /// The keyspace this operation writes.
    pub fn space(&self) -> &str {
        match self {
            BatchOp::Put { space, .. } | BatchOp::Delete { space, .. } | BatchOp::DeleteRange { space, .. } => space,
        }
    }

    /// Bytes this operation carries: keyspace name, key(s) and value.
    pub fn payload_bytes(&self) -> usize {
        match self {
            BatchOp::Put { space, key, value } => space.len() + key.len() + value.len(),
            BatchOp::Delete { space, key } => space.len() + key.len(),
            BatchOp::DeleteRange { space, range } => space.len() + range.bound_bytes(),
        }
    }

    fn validate(&self) -> Result<(), InvalidInput> {
        validate_space_name(self.space())?;
        match self {
            BatchOp::Put { key, value, .. } => {
                validate_key(key)?;
                if value.len() > STORE_VALUE_BYTES_MAX {
                    return Err(InvalidInput::ValueTooLarge { len: value.len(), max: STORE_VALUE_BYTES_MAX });
                }
                Ok(())
            }
            BatchOp::Delete { key, .. } => validate_key(key),
            BatchOp::DeleteRange { range, .. } => range.validate(),
        }
    }
}

/// Checks a keyspace name: non-empty and at most [`SPACE_NAME_BYTES_MAX`]
/// bytes. Any UTF-8 is allowed, `/` included ("ns/<name>/entries").
pub fn validate_space_name(space: &str) -> Result<(), InvalidInput> {
    if space.is_empty() {
        return Err(InvalidInput::EmptySpaceName);
    }
    if space.len() > SPACE_NAME_BYTES_MAX {
        return Err(InvalidInput::SpaceNameTooLong { len: space.len(), max: SPACE_NAME_BYTES_MAX });
    }
    Ok(())
}

pub(crate) fn validate_key(key: &[u8]) -> Result<(), InvalidInput> {
    if key.len() > STORE_KEY_BYTES_MAX {
        return Err(InvalidInput::KeyTooLarge { len: key.len(), max: STORE_KEY_BYTES_MAX });
    }
    Ok(())
}

/// An ordered list of operations committed atomically: after a commit either
/// every operation is applied, in list order, or none is. A later operation on
/// the same key overrides an earlier one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<BatchOp>,
    payload_bytes: usize,
}

impl WriteBatch {
    /// An empty batch. Committing it is allowed and writes nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a put.
    pub fn put(&mut self, space: impl Into<String>, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.push(BatchOp::Put { space: space.into(), key: key.into(), value: value.into() })
    }

    /// Appends a delete of one key.
    pub fn delete(&mut self, space: impl Into<String>, key: impl Into<Vec<u8>>) -> &mut Self {
        self.push(BatchOp::Delete { space: space.into(), key: key.into() })
    }

    /// Appends a delete of every key in `range`.
    pub fn delete_range(&mut self, space: impl Into<String>, range: KeyRange) -> &mut Self {
        self.push(BatchOp::DeleteRange { space: space.into(), range })
    }

    /// Appends any operation.
    pub fn push(&mut self, op: BatchOp) -> &mut Self {
        self.payload_bytes = self.payload_bytes.saturating_add(op.payload_bytes());
        self.ops.push(op);
        self
    }

    /// Appends every operation of `other`, after this batch's own.
    pub fn append(&mut self, other: WriteBatch) {
        self.payload_bytes = self.payload_bytes.saturating_add(other.payload_bytes);
        self.ops.extend(other.ops);
    }

    /// The operations, in commit order.
    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }

    /// Consumes the batch, returning its operations in commit order.
    pub fn into_ops(self) -> Vec<BatchOp> {
        self.ops
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch has no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Sum of [`BatchOp::payload_bytes`] over the batch; bounded by [`BATCH_BYTES_MAX`].
    pub fn payload_bytes(&self) -> usize {
        self.payload_bytes
    }

    /// Checks every bound: names, key and value sizes, operation count and
    /// payload bytes. Every backend calls this before writing anything, so a
    /// batch refused here changes nothing.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        if self.ops.len() > BATCH_OPS_MAX {
            return Err(InvalidInput::TooManyOps { count: self.ops.len(), max: BATCH_OPS_MAX });
        }
        if self.payload_bytes > BATCH_BYTES_MAX {
            return Err(InvalidInput::BatchTooLarge { bytes: self.payload_bytes, max: BATCH_BYTES_MAX });
        }
        self.ops.iter().try_for_each(BatchOp::validate)
    }
}

impl FromIterator<BatchOp> for WriteBatch {
    fn from_iter<I: IntoIterator<Item = BatchOp>>(iter: I) -> Self {
        let mut batch = WriteBatch::new();
        for op in iter {
            batch.push(op);
        }
        batch
    }
}
