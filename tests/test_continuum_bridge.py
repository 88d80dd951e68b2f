"""The continuum bridge serves the same experiences (samples, order, labels) as the Avalanche scenario."""

import pandas as pd
import pytest
from PIL import Image

from streamcl.benchmarks.continuum_bridge import continuum_stream, to_continuum
from streamcl.benchmarks.scenarios import from_dirmap

SIZE = 16


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rows = []
    for c in range(1, 6):
        for o in (1, 2):
            for s in (1, 2, 3):
                for f in (1, 2, 3):
                    p = f"c{c}/o{o}/s{s}_{f}.png"
                    (root / p).parent.mkdir(parents=True, exist_ok=True)
                    Image.new("RGB", (8, 8), (40 * c, 60 * o, 20 * f)).save(root / p)
                    rows.append({"class": c, "object": o, "session": s, "im_num": f, "im_path": p})
    return pd.DataFrame(rows), root


@pytest.mark.parametrize("protocol", ["class_instance", "class_iid", "instance"])
def test_same_samples_per_experience(tree, protocol):
    dirmap, root = tree
    sc = from_dirmap(
        dirmap, root, test_sessions=[3], protocol=protocol, run=2, image_size=SIZE, test_subsample=4
    )
    cs = to_continuum(sc)
    direct = continuum_stream(
        dirmap, root, test_sessions=[3], protocol=protocol, run=2, image_size=SIZE, test_subsample=4
    )
    assert cs.class_order == direct.class_order == sc.streamcl_info.class_order
    for avl_stream, cl_scenario, cl_direct in (
        (sc.train_stream, cs.train, direct.train),
        (sc.test_stream, cs.test, direct.test),
    ):
        assert len(cl_scenario) == len(avl_stream) == len(cl_direct)
        for t, (exp, task, task2) in enumerate(zip(avl_stream, cl_scenario, cl_direct)):
            ids = list(exp.dataset.sample_id)
            assert list(task._x) == [str(root / dirmap["im_path"][i]) for i in ids] == list(task2._x)
            assert list(task._y) == list(exp.dataset.targets) == list(task2._y)
            assert set(task._t.astype(int)) == {t}
    x, y, t = cs.train[0][0]
    x_avl, y_avl, _ = sc.train_stream[0].dataset[0]
    assert x.shape == (3, SIZE, SIZE) and int(y) == y_avl and x.allclose(x_avl)


def test_to_continuum_needs_a_streamcl_scenario():
    with pytest.raises(ValueError, match="streamcl"):
        to_continuum(object())
