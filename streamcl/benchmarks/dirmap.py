"""The dirmap table: one row per image (``class, object, session, im_num, im_path``).

Dataset indexers write it, protocols read it. :func:`load_dirmap` accepts a
DataFrame or a CSV path, including the original CRUMB/AugMem CSVs (with their
unnamed pandas index column and extra columns), and checks columns and dtypes
so that a malformed table fails with one message naming the file and column.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Union

import numpy as np
import pandas as pd

from streamcl.errors import DatasetError

#: Columns every dirmap must have (extra columns are kept).
REQUIRED_COLUMNS = ("class", "object", "session", "im_num", "im_path")
#: Columns that must hold integers (``class`` may also hold strings).
INT_COLUMNS = ("object", "session", "im_num")

_UNNAMED = re.compile(r"^Unnamed: \d+$")

DirmapSource = Union[pd.DataFrame, str, Path]


def load_dirmap(src: DirmapSource) -> pd.DataFrame:
    """Read and validate a dirmap (DataFrame or CSV path); returns a fresh table with a 0..N-1 index.

    Unnamed index columns (``Unnamed: 0`` or an empty header) are dropped, the
    integer columns are cast to int64, ``im_path`` to str. Row positions of the
    returned table are the ``sample_id``s used by the streams.
    """
    if isinstance(src, pd.DataFrame):
        where = "dirmap DataFrame"
        df = src.copy()
    elif isinstance(src, (str, Path)):
        path = Path(src)
        where = str(path)
        if not path.is_file():
            raise DatasetError(f"{where}: dirmap file not found")
        try:
            df = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise DatasetError(f"{where}: not a readable CSV dirmap ({e})") from e
    else:
        raise DatasetError(f"dirmap must be a pandas DataFrame or a CSV path, got {type(src).__name__}")

    unnamed = [c for c in df.columns if isinstance(c, str) and (_UNNAMED.match(c) or c.strip() == "")]
    df = df.drop(columns=unnamed)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(
            f"{where}: missing dirmap column(s) {', '.join(missing)} "
            f"(required: {', '.join(REQUIRED_COLUMNS)}; found: {', '.join(map(str, df.columns))})"
        )
    if len(df) == 0:
        raise DatasetError(f"{where}: the dirmap has no rows")

    bad = []
    for col in REQUIRED_COLUMNS:
        if df[col].isna().any():
            bad.append(f"{col} has {int(df[col].isna().sum())} empty value(s)")
    if bad:
        raise DatasetError(f"{where}: bad dirmap column(s): {'; '.join(bad)}")

    for col in INT_COLUMNS + ("class",):
        s = df[col]
        if col == "class" and (pd.api.types.is_string_dtype(s) or s.dtype == object):
            if all(isinstance(v, str) for v in s):
                continue
        if pd.api.types.is_integer_dtype(s):
            df[col] = s.astype(np.int64)
        elif pd.api.types.is_float_dtype(s) and np.all(np.mod(s.to_numpy(), 1) == 0):
            df[col] = s.astype(np.int64)
        else:
            kind = "integers or strings" if col == "class" else "integers"
            bad.append(f"{col} must hold {kind} (dtype {s.dtype}, e.g. {s.iloc[0]!r})")
    if not (pd.api.types.is_string_dtype(df["im_path"]) or df["im_path"].dtype == object) or not all(
        isinstance(v, str) for v in df["im_path"]
    ):
        bad.append(f"im_path must hold relative path strings (dtype {df['im_path'].dtype})")
    if bad:
        raise DatasetError(f"{where}: bad dirmap column dtype(s): {'; '.join(bad)}")
    return df.reset_index(drop=True)
