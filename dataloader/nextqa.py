"""NExT-QA: `<root>/nextqa/{split}.csv` + `<root>/nextqa/clipvitl14.pth`."""
import os
from typing import List, Optional

from util.errors import MissingFileError

from .base import QARecord, parse_answer, read_csv_rows

N_OPTIONS = 5
OPTION_KEYS = [f"a{i}" for i in range(N_OPTIONS)]
COLUMNS = ["video", "question", "answer", "qid", "type"] + OPTION_KEYS
# raw question type -> its group: causal, temporal, descriptive
TYPE_GROUP = {"CW": "C", "CH": "C", "TN": "T", "TC": "T", "TP": "T", "DL": "D", "DC": "D", "DO": "D"}


def type_group(qtype: str) -> Optional[str]:
    """'CW' -> 'C', 'TN' -> 'T', 'DL' -> 'D'; None for a type outside the published eight."""
    return TYPE_GROUP.get(qtype)


def type_groups(qtype: str) -> List[str]:
    """Accuracy buckets besides 'total': [group letter, raw type] (just [raw type] if unknown)."""
    g = type_group(qtype)
    return [g, qtype] if g else ([qtype] if qtype else [])


def annotation_path(root, split) -> str:
    return os.path.join(str(root), "nextqa", f"{split}.csv")


def read_records(root, split) -> List[QARecord]:
    path = annotation_path(root, split)
    if not os.path.isfile(path):
        raise MissingFileError(f"NExT-QA {split} annotations not found: {path}")
    records = []
    for where, row in read_csv_rows(path, COLUMNS, id_key="qid"):
        qid = f"{row['video']}_{row['qid']}"
        records.append(QARecord(
            vid=row["video"], qid=qid, question=row["question"],
            options=[row[k] for k in OPTION_KEYS],
            answer=parse_answer(row["answer"], N_OPTIONS, where, qid, allow_none=split.startswith("test")),
            qtype=row["type"], source=where))
    return records
