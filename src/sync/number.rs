//! Which `.N` a part's object tries next, from the numbers its hour has taken.
//!
//! Part k of an hour goes to `.k` if that name is free, else to the first free
//! number above it (docs/FORMAT.md). That suits a host alone under its prefix.
//! A fleet is different: every host seals an hour at the same moment (the hour's
//! end plus the late window, by clocks kept in step), lists it while it is still
//! empty, and would race the others for the same name, each loser having sent
//! its whole object for nothing. So a host told the fleet's size (`fleet_size`)
//! picks at random among the first `SPREAD × fleet_size` free numbers from the
//! start: with W hosts at once, a host's pick is taken by another with a
//! chance of about 1/SPREAD. Writers that lost a race all the same double
//! their window with each race lost, so a crowd that was not expected (no
//! `fleet_size` given) spreads out within a few rounds too, and a lone writer
//! that lost once still lands close by. A host that lost a race also takes the
//! most names it then saw in an hour as the fleet's size, if larger: an
//! unexpected crowd costs its first hour some rounds, not every hour. A host
//! alone never loses a race, so its names stay `.1`, `.2`, ….

use std::collections::BTreeSet;

/// Free numbers per expected host a fleet's first picks spread over: about
/// one host in 32 loses its first race (3% of the bytes sent again), at the
/// price of numbers up to 32 times the fleet's size.
pub const SPREAD: u64 = 32;

/// The window doubles at most this often...
const MAX_DOUBLINGS: u32 = 10;
/// ...and never holds more numbers than this.
const MAX_WINDOW: u64 = 1 << 24;

/// The window of free numbers a writer picks from: `first_window` on its
/// first try (1: the first free number), doubling with each of `lost` races.
pub fn window(first_window: u64, lost: u32) -> u64 {
    (first_window.max(1) << lost.min(MAX_DOUBLINGS)).min(MAX_WINDOW)
}

/// The window of the first try for a fleet of `fleet_size` hosts.
pub fn first_window(fleet_size: u32) -> u64 {
    if fleet_size <= 1 {
        1
    } else {
        u64::from(fleet_size) * SPREAD
    }
}

/// The number to try: the `pick`-th free number at or above `from`, `pick`
/// being given the window's size (`window`) and returning an index below it.
pub fn choose(taken: &BTreeSet<u32>, from: u32, window: u64, pick: impl FnOnce(u64) -> u64) -> u32 {
    let at = pick(window).min(window.saturating_sub(1));
    // The at-th free number: each taken number at or below the candidate
    // pushes it up by one, in order.
    let mut n = u64::from(from) + at;
    for &t in taken.range(from..) {
        if u64::from(t) <= n {
            n += 1;
        } else {
            break;
        }
    }
    // Past u32::MAX only with billions of objects an hour; the last number
    // is then the answer the store will refuse.
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A random index below `len`, for [`choose`].
pub fn at_random(len: u64) -> u64 {
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
        let first = window(first_window(1), 0);
        assert_eq!(first, 1);
        assert_eq!(choose(&taken(&[]), 0, first, at_random), 0);
        assert_eq!(choose(&taken(&[1, 2]), 0, first, at_random), 0);
        assert_eq!(choose(&taken(&[0, 1, 2, 4]), 0, first, at_random), 3);
        assert_eq!(choose(&taken(&[0, 1, 2, 4]), 2, first, at_random), 3);
        assert_eq!(choose(&taken(&[0, 1, 2, 3]), 2, first, at_random), 4);
    }

    #[test]
    fn after_lost_races_the_window_of_free_numbers_doubles() {
        let hour = taken(&[0, 1, 3]);
        assert_eq!(window(1, 3), 8);
        // The eighth free number: 2, 4, 5, 6, 7, 8, 9, 10.
        assert_eq!(choose(&hour, 0, window(1, 3), |len| len - 1), 10);
        assert_eq!(window(1, 40), 1024, "the window stops doubling");
        assert_eq!(window(100_000, 40), MAX_WINDOW, "and stops growing");
    }

    #[test]
    fn the_pick_counts_free_numbers_only() {
        let hour = taken(&[5, 6, 9, 200]);
        let all: Vec<u32> = (0..12).map(|i| choose(&hour, 4, 12, |_| i)).collect();
        assert_eq!(all, [4, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18]);
        // An index past the window is held to its last number.
        assert_eq!(choose(&hour, 4, 12, |_| 99), 18);
    }

    #[test]
    fn writers_that_lost_together_spread_out_instead_of_racing_again() {
        // 64 writers lost the race for .0 and listed the hour together.
        let hour = taken(&[0]);
        let picks: BTreeSet<u32> = (0..64)
            .map(|_| choose(&hour, 0, window(1, 6), at_random))
            .collect();
        assert!(
            picks.len() > 16,
            "64 writers picking from 64 free numbers chose only {} different ones",
            picks.len()
        );
        assert!(picks.iter().all(|n| (1..=64).contains(n)), "{picks:?}");
    }

    #[test]
    fn a_fleet_of_a_thousand_listing_an_empty_hour_mostly_picks_apart() {
        let empty = taken(&[]);
        let first = window(first_window(1000), 0);
        assert_eq!(first, 32_000);
        let mut picks = std::collections::BTreeMap::<u32, u32>::new();
        for _ in 0..1000 {
            *picks
                .entry(choose(&empty, 0, first, at_random))
                .or_default() += 1;
        }
        // Hosts whose number another host picked too: about 1 in 32 (31 of
        // 1000 expected; more than 80 is 1 chance in many millions).
        let clashing: u32 = picks.values().filter(|&&k| k > 1).sum();
        assert!(
            clashing < 80,
            "{clashing} of 1000 hosts picked a shared number"
        );
        assert!(picks.keys().all(|&n| n < 32_000));
    }
}
