"""The RAM model's compact page store (conformance/rules/ram_model.PageStore): the same
mapping a dict of (round, lane, content) per page would be, in arrays per RAMBlock."""

import hashlib

from hypothesis import example, given, strategies as st

from conformance.rules.ram_model import MAX_PAGES, PAGE, PageStore, RamModel, MainPage

_keys = st.tuples(st.sampled_from(["pc.ram", "vga.vram"]),
                  st.one_of(st.integers(0, 300).map(lambda i: i * PAGE),  # the arrays
                            st.integers(0, 2**20),  # odd offsets: the overflow dict
                            st.just(MAX_PAGES * PAGE)))  # past the arrays
_ops = st.lists(st.tuples(_keys, st.integers(0, 2**33), st.integers(-1, 255),
                          st.one_of(st.none(), st.binary(min_size=1, max_size=8))), max_size=60)


@example([(("pc.ram", 0), 1, 0, b"a"), (("pc.ram", 0), 2**32, 1, b"b"), (("pc.ram", 0), 3, 2, None)], True)
@example([(("pc.ram", 0), 2**32, 1, b"b"), (("pc.ram", 0), 3, 2, b"c")], False)
@given(_ops, st.booleans())
def test_store_is_the_dict_it_replaces(ops, hashed):
    store, ref = PageStore(hashed), {}
    for key, r, lane, data in ops:
        content = None if data is None else (hashlib.blake2b(data, digest_size=16).digest() if hashed else data)
        store.put(key, r, lane, content)
        ref[key] = (r, lane, content)
    assert len(store) == len(ref)
    assert dict(store.items()) == ref
    assert all(store.get(k) == v for k, v in ref.items())
    assert store.get(("pc.ram", 301 * PAGE)) is None and ("nowhere", 0) not in store


def test_a_4_gib_guest_costs_23_bytes_a_page():
    m = RamModel(4, hash_pages=True)
    last = (4 << 30) - PAGE
    m.feed(MainPage("pc.ram", last, b"x"))
    m.feed(MainPage("pc.ram", 0, None))
    assert len(m.ram) == 2 and m.ram[("pc.ram", last)][2] == m.content(b"x") and m.ram[("pc.ram", 0)][2] is None
    assert m.ram.nbytes() <= 23 * ((4 << 30) // PAGE) * 1.01
