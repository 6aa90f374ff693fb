import itertools
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwnas.errors import ArchError, SpaceError
from hwnas.space import Arch, SearchSpace, StageSpec, get_space, make_divisible


def test_default_is_ofa_mobilenetv3(default):
    assert [s.width for s in default.stages] == [24, 40, 80, 112, 160]
    assert [s.stride for s in default.stages] == [2, 2, 2, 1, 2]
    assert [s.act for s in default.stages] == ["relu", "relu", "hswish", "hswish", "hswish"]
    assert [s.se for s in default.stages] == [False, True, False, True, True]
    assert (default.stem_channels, default.first_block_channels) == (16, 16)
    assert default.stem_act == "hswish"
    assert (default.depths, default.kernels, default.expands) == ((2, 3, 4), (3, 5, 7), (3, 4, 6))
    assert default.resolutions == (160, 176, 192, 208, 224)
    assert (default.final_expand_channels, default.feature_mix_channels) == (960, 1280)
    assert default.n_var == 46 and default.n_blocks == 20


def test_width_multiplier_12():
    sp = get_space("default-w1.2")
    assert sp.stage_widths == tuple(make_divisible(w * 1.2) for w in (24, 40, 80, 112, 160))
    assert sp.stage_widths == (32, 48, 96, 136, 192)
    assert sp.final_expand_channels == 1152


def test_space_is_a_value(default):
    sp = SearchSpace(name="two", stages=default.stages[:2], resolutions=(64,))
    assert sp.n_stages == 2 and sp.n_var == 2 * 9 + 1
    assert SearchSpace.from_dict(sp.to_dict()) == sp
    assert SearchSpace.from_dict(json.loads(json.dumps(sp.to_dict()))).id == sp.id
    assert sp.id != default.id


@pytest.mark.parametrize("kwargs, word", [
    ({"kernels": (3, 4)}, "odd"),
    ({"depths": ()}, "empty"),
    ({"resolutions": (224, 160)}, "sorted"),
    ({"stages": (StageSpec(16, 3, "relu", False),)}, "stride"),
    ({"stages": (StageSpec(16, 2, "gelu", False),)}, "act"),
])
def test_bad_space_parameters(kwargs, word):
    with pytest.raises(SpaceError, match=word):
        SearchSpace(**kwargs)


def test_unknown_space_name():
    with pytest.raises(SpaceError, match="known"):
        get_space("huge")


def test_json_and_ofa_forms_agree(small):
    a = small.sample(1, seed=1)[0]
    assert small.arch(a.to_dict()) == a
    assert small.arch(a.to_ofa()) == a
    ofa = a.to_ofa()
    ofa["image_size"] = ofa.pop("r")
    assert small.arch(ofa) == a
    assert small.arch(json.loads(a.to_json())) == a


def test_canonical_form_ignores_unused_slots(small):
    a = small.arch(r=40, d=[2] * 5, k=[5] * 20, e=[4] * 20)
    raw = a.to_dict()
    for s in range(5):
        for b in (2, 3):
            raw["k"][s * 4 + b] = 7
            raw["e"][s * 4 + b] = 0  # NSGANetV2-style zero in an unused slot
    b = small.arch(raw)
    assert a == b and hash(a) == hash(b) and a.key == b.key
    assert b.k[2] == small.kernels[0] and b.e[3] == small.expands[0]
    assert small.arch_name(a) == small.arch_name(b)


@pytest.mark.parametrize("obj, words", [
    ([1, 2], ["JSON object", "list"]),
    ("r224", ["JSON object", "str"]),
    ({"r": 32, "d": [2] * 5, "k": [3] * 20}, ["missing", "'e'"]),
    ({"r": 32, "d": [2] * 5, "k": [3] * 20, "e": [3] * 20, "w": 1}, ["unknown", "'w'", "allowed"]),
    ({"r": 33, "d": [2] * 5, "k": [3] * 20, "e": [3] * 20}, ["'r'", "33", "[32, 40, 48]"]),
    ({"r": 32, "d": [2] * 4, "k": [3] * 20, "e": [3] * 20}, ["'d'", "5 entries", "got 4"]),
    ({"r": 32, "d": [2] * 5, "k": [4] * 20, "e": [3] * 20}, ["k[0]", "4", "[3, 5, 7]"]),
    ({"r": 32, "d": [2] * 5, "k": [3] * 20, "e": [3.5] * 20}, ["e[0]", "3.5", "[3, 4, 6]"]),
    ({"r": 32, "d": [True] * 5, "k": [3] * 20, "e": [3] * 20}, ["d[0]", "number", "bool"]),
    ({"r": "32", "d": [2] * 5, "k": [3] * 20, "e": [3] * 20}, ["'r'", "number", "str"]),
    ({"r": 32, "d": 2, "k": [3] * 20, "e": [3] * 20}, ["'d'", "list", "int"]),
    ({"r": 32, "d": [2] * 5, "k": [3, 3, 9] + [3] * 17, "e": [3] * 20}, ["k[2]", "unused", "9"]),
])
def test_bad_archs_name_field_value_and_allowed(small, obj, words):
    with pytest.raises(ArchError) as info:
        small.arch(obj)
    for w in words:
        assert w in str(info.value)


def test_load_arch_file_errors(tmp_path, small):
    p = tmp_path / "a.json"
    p.write_text("{not json")
    with pytest.raises(ArchError, match="not valid JSON"):
        small.load_arch(p)
    with pytest.raises(ArchError, match="cannot read"):
        small.load_arch(tmp_path / "missing.json")
    p.write_text(json.dumps(small.largest().to_dict()))
    assert small.load_arch(p) == small.largest()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 300) | st.floats(allow_nan=True)
    | st.text(max_size=4),
    lambda children: st.lists(children, max_size=25) | st.dictionaries(st.text(max_size=3),
                                                                      children, max_size=5),
    max_leaves=30)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_fuzzed_json_raises_only_arch_error(obj):
    sp = SearchSpace.small()
    try:
        sp.arch(obj)
    except ArchError:
        pass


@settings(max_examples=300)
@given(st.fixed_dictionaries({
    "r": st.sampled_from([32, 40, 48, 33, True, "x", None]),
    "d": st.lists(st.sampled_from([2, 3, 4, 1, 2.0]), min_size=4, max_size=6),
    "k": st.lists(st.sampled_from([3, 5, 7, 0, 4]), min_size=19, max_size=21),
    "e": st.lists(st.sampled_from([3, 4, 6, 0, 5.5]), min_size=19, max_size=21),
}))
def test_near_valid_archs_raise_only_arch_error(obj):
    sp = SearchSpace.small()
    try:
        a = sp.arch(obj)
    except ArchError:
        return
    assert sp.arch(a.to_dict()) == a  # anything accepted round-trips


@settings(max_examples=200)
@given(st.data())
def test_encode_decode_round_trip(data):
    sp = SearchSpace.small()
    lo, hi = sp.bounds
    x = np.array([data.draw(st.integers(int(a), int(b))) for a, b in zip(lo, hi)])
    arch = sp.decode(x)
    assert sp.arch(arch.to_dict()) == arch  # decoded archs are valid and canonical
    assert np.array_equal(sp.encode(arch), sp.canonical_vector(x))
    assert sp.decode(sp.encode(arch)) == arch


def test_decode_rejects_bad_vectors(small):
    x = small.encode(small.largest())
    with pytest.raises(ArchError, match="shape"):
        small.decode(x[:-1])
    y = x.copy()
    y[0] = 3
    with pytest.raises(ArchError, match="gene 0 = 3.*0..2"):
        small.decode(y)
    with pytest.raises(ArchError, match="whole"):
        small.decode(x + 0.5)
    assert small.decode(x.astype(float)) == small.largest()


def test_sampling_is_seeded_valid_and_covers_choices(small):
    archs = small.sample(300, seed=3)
    assert archs == small.sample(300, seed=3)
    assert archs != small.sample(300, seed=4)
    for a in archs:
        assert small.arch(a.to_dict()) == a
    assert {a.r for a in archs} == set(small.resolutions)
    assert {d for a in archs for d in a.d} == set(small.depths)


def test_mutation_and_crossover_yield_valid_archs(small, rng):
    a, b = small.sample(2, seed=7)
    changed = 0
    for _ in range(200):
        m = small.mutate(a, rng, prob=0.2)
        c = small.crossover(a, b, rng)
        assert small.arch(m.to_dict()) == m and small.arch(c.to_dict()) == c
        changed += m != a
        xa, xb, xc = small.encode(a), small.encode(b), small.encode(c)
        # every gene of a child comes from a parent (up to unused-slot zeroing)
        assert np.all((xc == xa) | (xc == xb) | (xc == 0))
    assert changed > 150


def test_size_is_exact_by_enumeration():
    tiny = SearchSpace(name="tiny", stages=(StageSpec(8, 2, "relu", False),
                                            StageSpec(16, 1, "hswish", True)),
                       depths=(1, 2), kernels=(3, 5), expands=(3, 6), resolutions=(32, 48))
    lo, hi = tiny.bounds
    archs = {tiny.decode(np.array(x)) for x in itertools.product(
        *[range(a, b + 1) for a, b in zip(lo, hi)])}
    assert tiny.size() == len(archs) == ((4 + 16) ** 2) * 2


def test_default_size(default):
    assert default.size() == (9 ** 2 + 9 ** 3 + 9 ** 4) ** 5 * 5


def test_names_are_short_unique_and_file_safe(small):
    archs = set(small.sample(500, seed=0))
    names = {small.arch_name(a) for a in archs}
    assert len(names) == len(archs)
    assert all(set(n) <= set("rke0123456789.-") for n in names)
    assert small.arch_name(small.smallest()) == "r32" + "-k3e3.k3e3" * 5


def test_raw_arch_is_a_plain_value():
    a = Arch(32, (2,), (3, 3), (3, 3))
    assert a == Arch(32, (2,), (3, 3), (3, 3))
    assert len({a, Arch(32, (2,), (3, 3), (3, 3))}) == 1


def test_input_sizes_are_a_space_parameter():
    from hwnas.space import format_resolutions, parse_resolutions

    ofa = get_space("default-w1.2@128-224:4")
    assert ofa.resolutions == tuple(range(128, 225, 4)) and ofa.name == "default-w1.2@128-224:4"
    assert get_space(ofa.name).id == ofa.id  # the name says everything
    assert get_space(ofa.to_dict()["name"]).to_dict() == ofa.to_dict()
    assert ofa.id != get_space("default-w1.2").id  # another space ...
    assert ofa.weights_id == get_space("default-w1.2").weights_id  # ... with the same weights
    assert ofa.weights_id != get_space("default").weights_id
    assert get_space("default@160-224:16") == get_space("default")  # the preset itself
    assert get_space("default@156,192").resolutions == (156, 192)
    assert ofa.arch(r=156, d=[2] * 5, k=[3] * 20, e=[3] * 20).r == 156
    with pytest.raises(ArchError, match="'r' = 156 is not allowed"):
        get_space("default-w1.2").arch(r=156, d=[2] * 5, k=[3] * 20, e=[3] * 20)
    for text in ("128-224:4,260", "156,192", "1-3:1,5-9:2,20", "160-224:16"):
        assert format_resolutions(parse_resolutions(text)) == text
    for bad in ("default@", "default@abc", "default@224-128:4", "default@128-224:0",
                "default@160:4", "nope@160"):
        with pytest.raises(SpaceError, match="resolutions|unknown search space"):
            get_space(bad)
