//! Header maps kept for reuse: the inline HTTP/1 server takes one for each request it parses
//! and the pooled HTTP/1 client one for each response head, and each gives it back once the
//! head is on the wire. A map's two tables are allocated once per thread instead of twice per
//! message; the request's is over a kilobyte, beyond the allocator's fast per-thread cache.

use std::cell::RefCell;

use http::HeaderMap;

/// How many spare maps a thread keeps: about as many as its connections have heads in flight.
const MAX_SPARE_MAPS: usize = 64;
/// A map that has grown past this many headers is dropped rather than kept.
const MAX_KEPT_CAPACITY: usize = 96;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room for `capacity` headers: a spare one when this thread has one.
pub(crate) fn take(capacity: usize) -> HeaderMap {
    match SPARE.with_borrow_mut(Vec::pop) {
        Some(mut map) => {
            map.reserve(capacity);
            map
        }
        None => HeaderMap::with_capacity(capacity),
    }
}

/// Keeps `map`'s tables for a later [`take`] on this thread; its headers are dropped now.
pub(crate) fn give_back(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > MAX_KEPT_CAPACITY {
        return;
    }
    map.clear();
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < MAX_SPARE_MAPS {
            spare.push(map);
        }
    });
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use http::header::HOST;

    use super::*;

    #[test]
    fn a_map_given_back_comes_back_empty_with_its_room() {
        let mut map = take(10);
        map.insert(HOST, HeaderValue::from_static("example.com"));
        let room = map.capacity();
        give_back(map);
        let again = take(4);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), room);
    }

    #[test]
    fn a_spare_map_grows_to_the_room_asked_for() {
        give_back(HeaderMap::with_capacity(2));
        let map = take(40);
        assert!(map.is_empty());
        assert!(map.capacity() >= 40);
    }

    #[test]
    fn a_grown_map_is_not_kept() {
        let _ = SPARE.with_borrow_mut(std::mem::take);
        give_back(HeaderMap::with_capacity(MAX_KEPT_CAPACITY * 2));
        assert_eq!(SPARE.with_borrow(Vec::len), 0);
        let kept = (0..MAX_SPARE_MAPS + 5).map(|_| HeaderMap::with_capacity(8));
        kept.for_each(give_back);
        assert_eq!(SPARE.with_borrow(Vec::len), MAX_SPARE_MAPS);
    }
}
