//! The pool's sizes and demand, without an engine.

#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn pool_sizes_parse() {
    let size: PoolSize = "warren-base:latest=3".parse().unwrap();
    assert_eq!(size, PoolSize::fixed("warren-base:latest", 3));
    assert_eq!("localhost:5000/x=1".parse::<PoolSize>().unwrap().max, 1);
    let range: PoolSize = "warren-base=2..8".parse().unwrap();
    assert_eq!((range.min, range.max), (2, 8));
    assert_eq!("x=0..4".parse::<PoolSize>().unwrap().min, 0);
    for bad in [
        "warren-base",
        "=2",
        "x=y",
        "a b=1",
        "x=3..2",
        "x=1..",
        "x=..2",
    ] {
        assert!(bad.parse::<PoolSize>().is_err(), "{bad}");
    }
}

#[test]
fn a_pool_follows_demand_between_its_bounds() {
    let size: PoolSize = "x=2..8".parse().unwrap();
    assert_eq!(wanted(&size, 0), 2);
    assert_eq!(wanted(&size, 5), 7);
    assert_eq!(wanted(&size, 40), 8);
    assert_eq!(wanted(&"x=0..4".parse().unwrap(), 1), 1);
    let fixed = PoolSize::fixed("x", 3);
    assert_eq!(wanted(&fixed, 0), 3);
    assert_eq!(wanted(&fixed, 9), 3);
}

#[test]
fn demand_is_counted_per_image_within_its_window_and_bounded() {
    let pool = Pool::new(&[PoolSize::fixed("x", 1)]);
    for _ in 0..3 {
        pool.note_demand("sha256:a");
    }
    pool.note_demand("sha256:b");
    assert_eq!(pool.recent_demand("sha256:a", Duration::from_secs(60)), 3);
    assert_eq!(pool.recent_demand("sha256:b", Duration::from_secs(60)), 1);
    assert_eq!(pool.recent_demand("sha256:a", Duration::ZERO), 0);
    for _ in 0..(DEMAND_MEMORY + 10) {
        pool.note_demand("sha256:c");
    }
    assert_eq!(
        pool.recent_demand("sha256:c", Duration::from_secs(60)),
        DEMAND_MEMORY
    );
}
