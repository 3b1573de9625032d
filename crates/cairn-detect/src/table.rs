//! One shard's series state, laid out for memory: the models in fixed-size chunks, and an index of
//! 4-byte slot numbers hashed by series id.
//!
//! A hash map holding the ~500-byte models inline keeps between 7/16 and 7/8 of its buckets full, so
//! a series cost 560 to 1,130 bytes of table, and every doubling left the old table to the
//! allocator: `cairn serve` grew by 890 bytes of resident memory per series. Here a model sits in a
//! chunk of [`CHUNK`] slots (one allocation each, never reallocated, all but the last full), and only
//! the index, 5 bytes a bucket, doubles. Removing a series moves the last slot into its place, so the
//! slots stay dense and an emptied chunk is freed.

use crate::univariate::SeriesModel;
use cairn_types::SeriesId;
use hashbrown::HashTable;

/// Slots per chunk: as many as fit in 12 KiB, the largest of jemalloc's small size classes that is a
/// whole number of pages (a slab of three pages holds exactly one chunk, so a freed chunk frees its
/// pages). `cairn serve` runs on jemalloc, which rounds an allocation of 16 KiB or more up to its size
/// class and adds a page to it (`opt.cache_oblivious`): the 124,608-byte chunks of 264 slots this
/// replaced took 135,168 bytes each, 512 a series, and one carved from pages the ingest queue had
/// dirtied was resident whole. 26 slots of 472 bytes are 12,272 of the class's 12,288 bytes;
/// jemalloc's metadata for each slab adds about 5 bytes a series and the chunk list one
/// (benches/README.md, "Series memory").
pub(crate) const CHUNK: usize = CHUNK_BYTES / size_of::<Slot>();
const CHUNK_BYTES: usize = 12 * 1024;

#[derive(Debug)]
struct Slot {
    id: SeriesId,
    model: SeriesModel,
}

#[derive(Debug, Default)]
pub(crate) struct SeriesTable {
    index: HashTable<u32>,
    chunks: Vec<Vec<Slot>>,
    len: usize,
}

/// Series ids are already uniform 64-bit hashes (xxh3 of the label set), so they only need mixing,
/// not SipHash's keyed cost: the shard is chosen by the low bits, which are constant within a
/// shard. A sender crafting colliding label sets gains nothing it could not get by sending many new
/// series, which the detector's cap bounds.
fn hash(id: SeriesId) -> u64 {
    let x = id.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^ (x >> 32)
}

fn slot(chunks: &[Vec<Slot>], i: u32) -> &Slot {
    &chunks[i as usize / CHUNK][i as usize % CHUNK]
}

impl SeriesTable {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn contains(&self, id: SeriesId) -> bool {
        self.index.find(hash(id), |&i| slot(&self.chunks, i).id == id).is_some()
    }

    pub(crate) fn get_mut(&mut self, id: SeriesId) -> Option<&mut SeriesModel> {
        let chunks = &mut self.chunks;
        let i = *self.index.find(hash(id), |&i| slot(chunks, i).id == id)? as usize;
        Some(&mut chunks[i / CHUNK][i % CHUNK].model)
    }

    /// Adds a series that is not in the table (the caller checked with [`Self::contains`]).
    pub(crate) fn insert(&mut self, id: SeriesId, model: SeriesModel) {
        debug_assert!(!self.contains(id));
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        self.chunks.last_mut().expect("a chunk with room was just ensured").push(Slot { id, model });
        let at = u32::try_from(self.len).expect("a shard holds fewer than 2^32 series");
        self.len += 1;
        let chunks = &self.chunks;
        self.index.insert_unique(hash(id), at, |&i| hash(slot(chunks, i).id));
    }

    /// Keeps the series whose model passes `keep`; returns how many were removed.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&SeriesModel) -> bool) -> usize {
        let mut removed = 0;
        let mut i = 0;
        while i < self.len {
            let at = i as u32;
            if keep(&slot(&self.chunks, at).model) {
                i += 1;
                continue;
            }
            let id = slot(&self.chunks, at).id;
            match self.index.find_entry(hash(id), |&j| j == at) {
                Ok(entry) => drop(entry.remove()),
                Err(_) => unreachable!("every slot is indexed"),
            }
            // The last slot moves into the hole; `i` is not advanced, so it is checked in turn.
            let last_chunk = self.chunks.last_mut().expect("a slot exists, so a chunk does");
            let last = last_chunk.pop().expect("chunks are never left empty");
            if last_chunk.is_empty() {
                self.chunks.pop();
            }
            self.len -= 1;
            if i < self.len {
                let from = self.len as u32;
                *self.index.find_mut(hash(last.id), |&j| j == from).expect("every slot is indexed") = at;
                self.chunks[i / CHUNK][i % CHUNK] = last;
            }
            removed += 1;
        }
        if removed > 0 {
            let chunks = &self.chunks;
            self.index.shrink_to(self.len, |&j| hash(slot(chunks, j).id));
            self.chunks.shrink_to_fit();
        }
        removed
    }

    /// The series ids held, in slot order.
    #[cfg(test)]
    pub(crate) fn ids(&self) -> impl Iterator<Item = SeriesId> + '_ {
        self.chunks.iter().flatten().map(|s| s.id)
    }

    /// Bytes allocated: the index's buckets, every chunk's slots and the chunk list.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.index.allocation_size()
            + self.chunks.iter().map(|c| c.capacity() * size_of::<Slot>()).sum::<usize>()
            + self.chunks.capacity() * size_of::<Vec<Slot>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_at(ts: i64) -> SeriesModel {
        let mut m = SeriesModel::new();
        m.update(&Default::default(), ts, 1.0);
        m
    }

    #[test]
    fn every_series_is_found_after_inserts_and_removals_across_chunks() {
        let mut t = SeriesTable::default();
        let n = 5 * CHUNK as i64 + 7;
        for k in 0..n {
            t.insert(SeriesId(k as u64 * 16), model_at(k));
        }
        assert_eq!(t.len(), n as usize);
        // Remove every third (by its stored time), from the front, the middle and the last chunk.
        assert_eq!(t.retain(|m| m.last_timestamp_ms() % 3 != 0), (n as usize).div_ceil(3));
        for k in 0..n {
            let id = SeriesId(k as u64 * 16);
            assert_eq!(t.contains(id), k % 3 != 0, "series {k}");
            if k % 3 != 0 {
                // The model found is this series' own, wherever it was moved to.
                assert_eq!(t.get_mut(id).map(|m| m.last_timestamp_ms()), Some(k));
            }
        }
        let mut ids: Vec<u64> = t.ids().map(|i| i.0).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..n).filter(|k| k % 3 != 0).map(|k| k as u64 * 16).collect::<Vec<_>>());
        // Emptying it frees every chunk.
        assert_eq!(t.retain(|_| false), ids.len());
        assert_eq!((t.len(), t.chunks.len()), (0, 0));
        t.insert(SeriesId(3), model_at(9));
        assert_eq!(t.get_mut(SeriesId(3)).map(|m| m.last_timestamp_ms()), Some(9));
    }

    #[test]
    fn a_chunk_fills_jemallocs_12_kib_size_class() {
        // The sizes the docs state (a changed model changes them): under a slot of 12 KiB left over.
        assert_eq!((size_of::<Slot>(), CHUNK, CHUNK * size_of::<Slot>()), (472, 26, 12_272));
    }

    #[test]
    fn a_series_costs_little_more_than_its_model() {
        let mut t = SeriesTable::default();
        let n = 12_500;
        for k in 0..n {
            t.insert(SeriesId(k * 16), SeriesModel::new());
        }
        let per_series = t.memory_bytes() as f64 / n as f64;
        let floor = (size_of::<SeriesModel>() + size_of::<SeriesId>()) as f64;
        // The index (5 bytes a bucket, at least 7/16 full) and one partly filled chunk: 13 bytes here,
        // where a map holding the models inline would take 160.
        assert!(per_series < floor + 16.0, "{per_series:.1} bytes per series, model and id alone {floor}");
    }
}
