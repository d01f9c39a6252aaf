"""Lazy contract validation that names the record, the field and the check of every failure."""

from dataclasses import dataclass

import pandas as pd
import pandera.pandas as pa

FAILURE_COLUMNS = ["source_id", "field", "check_name", "reason", "failure_value"]


@dataclass(frozen=True)
class ValidationOutcome:
    """The result of checking a frame against its contract.

    Attributes:
        rows: How many rows were checked.
        failures: One row per (source_id, field, check_name) with a readable reason.
    """

    rows: int
    failures: pd.DataFrame

    @property
    def bad_ids(self) -> set[str]:
        return set(self.failures["source_id"].dropna())

    @property
    def bad_share(self) -> float:
        return len(self.bad_ids) / self.rows if self.rows else 0.0


def conform(df: pd.DataFrame, model: type[pa.DataFrameModel]) -> pd.DataFrame:
    """``df`` with every contract column that holds no value cast to the contract's dtype.

    A day with no credit note, or a lookup that matched nothing, builds columns of dtype
    ``object`` or ``float64`` (pandas cannot infer a type from no values). Such a frame keeps
    its contract: an empty day is an ordinary day, not a type error. Columns with values are
    left alone, so a real type error is still caught by the contract.
    """
    out = df.copy()
    for name, column in model.to_schema().columns.items():
        if name not in out:
            continue
        if out.empty or (out[name].dtype == object and out[name].isna().all()):
            out[name] = out[name].astype(str(column.dtype))
    return out


def check_contract(df: pd.DataFrame, model: type[pa.DataFrameModel]) -> pd.DataFrame:
    """Validate ``df`` against ``model`` (eagerly: a failure stops the step) and return it,
    conformed (see ``conform``)."""
    out = conform(df, model)
    model.validate(out)
    return out


def validate_frame(
    df: pd.DataFrame,
    model: type[pa.DataFrameModel],
    *,
    system: str,
    obj: str,
    field_prefix: str = "",
) -> ValidationOutcome:
    """Validate ``df`` (which has a ``source_id`` column) lazily and explain every failure.

    A column-level failure with no row index (a missing column, a wrong dtype) blames every row,
    because no row of the frame can be trusted then.
    """
    try:
        model.validate(df, lazy=True)
    except pa.errors.SchemaErrors as e:
        return ValidationOutcome(len(df), _explain(df, e.failure_cases, system, obj, field_prefix))
    return ValidationOutcome(len(df), pd.DataFrame(columns=FAILURE_COLUMNS))


def _explain(
    df: pd.DataFrame, cases: pd.DataFrame, system: str, obj: str, prefix: str
) -> pd.DataFrame:
    ids = df["source_id"].astype(object) if "source_id" in df else None
    rows: list[dict[str, object]] = []
    for case in cases.itertuples(index=False):
        check = str(case.check)
        frame_level = case.schema_context == "DataFrameSchema"
        value = None if pd.isna(case.failure_case) else str(case.failure_case)
        missing_column = frame_level and check == "column_in_dataframe"
        if missing_column:
            # The failure case of a missing column is the column's name: that is the field.
            field, frame_level = f"{prefix}{value}", False
        else:
            field = check if frame_level else f"{prefix}{case.column}"
        index = case.index
        if index is None or pd.isna(index) or ids is None:
            targets = list(df["source_id"]) if "source_id" in df else []
        else:
            targets = [ids.get(index, f"row-{index}")]
        for target in targets:
            source_id = "(no id)" if pd.isna(target) else str(target)
            rows.append(
                {
                    "source_id": source_id,
                    "field": field,
                    "check_name": check,
                    "reason": f"{system} {obj} {source_id}: field {field} "
                    + ("is missing" if missing_column else f"fails {check}")
                    + (
                        ""
                        if frame_level or missing_column or value is None
                        else f" (value {value!r})"
                    )
                    + (" (value is null)" if value is None and check == "not_nullable" else ""),
                    "failure_value": None if frame_level or missing_column else value,
                }
            )
    out = pd.DataFrame(rows, columns=FAILURE_COLUMNS)
    # A dataframe-level check reports one case per column of the failing row: keep one.
    return out.drop_duplicates(subset=["source_id", "field", "check_name"]).reset_index(drop=True)
