//! Which `.N` a part's object tries next, from the numbers its hour has taken.
//!
//! Part k of an hour goes to `.k` if that name is free, else to the first free
//! number above it (docs/FORMAT.md). Writers that lost a race for a name
//! listed the hour at about the same moment and would all pick the same next
//! free number, losing to one another again, round after round: so a writer
//! that lost picks at random among the first 2, 4, 8, … free numbers, the
//! window doubling with each race it lost. A crowd of writers spreads out in a
//! few rounds, and a lone writer that lost once still lands close by.

use std::collections::BTreeSet;

/// The window stops doubling here: 1,024 free numbers to pick from.
const MAX_DOUBLINGS: u32 = 10;

/// The number to try: the first free one at or above `from`, or, after
/// `lost` lost races, one of the first `2^lost` free ones, the `pick`-th
/// (`pick` is given the window's size and returns an index below it).
pub fn choose(
    taken: &BTreeSet<u32>,
    from: u32,
    lost: u32,
    pick: impl FnOnce(usize) -> usize,
) -> u32 {
    let window = 1usize << lost.min(MAX_DOUBLINGS);
    let free: Vec<u32> = (from..=u32::MAX)
        .filter(|n| !taken.contains(n))
        .take(window)
        .collect();
    let at = pick(free.len()).min(free.len().saturating_sub(1));
    // Every number from `from` up taken cannot happen with fewer than 2^32
    // objects an hour; the last number is the answer the store will refuse.
    free.get(at).copied().unwrap_or(u32::MAX)
}

/// A random index below `len`, for [`choose`].
pub fn at_random(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        rand::random_range(0..len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(numbers: &[u32]) -> BTreeSet<u32> {
        numbers.iter().copied().collect()
    }

    #[test]
    fn a_part_takes_its_own_number_when_free_and_else_the_first_free_above() {
        assert_eq!(choose(&taken(&[]), 0, 0, at_random), 0);
        assert_eq!(choose(&taken(&[1, 2]), 0, 0, at_random), 0);
        assert_eq!(choose(&taken(&[0, 1, 2, 4]), 0, 0, at_random), 3);
        assert_eq!(choose(&taken(&[0, 1, 2, 4]), 2, 0, at_random), 3);
        assert_eq!(choose(&taken(&[0, 1, 2, 3]), 2, 0, at_random), 4);
    }

    #[test]
    fn after_lost_races_the_window_of_free_numbers_doubles() {
        let hour = taken(&[0, 1, 3]);
        let mut window = 0;
        choose(&hour, 0, 3, |len| {
            window = len;
            len - 1
        });
        assert_eq!(window, 8);
        // The eighth free number: 2, 4, 5, 6, 7, 8, 9, 10.
        assert_eq!(choose(&hour, 0, 3, |len| len - 1), 10);
        let mut window = 0;
        choose(&hour, 0, 40, |len| {
            window = len;
            0
        });
        assert_eq!(window, 1024, "the window stops doubling");
    }

    #[test]
    fn writers_that_lost_together_spread_out_instead_of_racing_again() {
        // 64 writers lost the race for .0 and listed the hour together.
        let hour = taken(&[0]);
        let picks: BTreeSet<u32> = (0..64).map(|_| choose(&hour, 0, 6, at_random)).collect();
        assert!(
            picks.len() > 16,
            "64 writers picking from 64 free numbers chose only {} different ones",
            picks.len()
        );
        assert!(picks.iter().all(|n| (1..=64).contains(n)), "{picks:?}");
    }
}
