"""EgoSchema: `<root>/egos/{val,test}.csv` (uid, question, a0..a4, answer), or the official
`<root>/egos/questions.json` + `subset_answers.json`; features `<root>/egos/features/<uid>.npy`.

From the official layout, `val` is the questions that have a public answer (the 500-question subset) and
`test` is every question (answer where public, else None). A csv, when present, is preferred."""
import os
from typing import List

from util.errors import MissingFileError

from .base import (DataError, QARecord, json_objects, load_json, 
                   parse_answer, read_csv_rows, require)

N_OPTIONS = 5
OPTION_KEYS = [f"a{i}" for i in range(N_OPTIONS)]
OFFICIAL_OPTION_KEYS = [f"option {i}" for i in range(N_OPTIONS)]
SPLITS = ("val", "test")


def csv_path(root, split) -> str:
    return os.path.join(str(root), "egos", f"{split}.csv")


def questions_path(root) -> str:
    return os.path.join(str(root), "egos", "questions.json")


def answers_path(root) -> str:
    return os.path.join(str(root), "egos", "subset_answers.json")


def _read_csv(path, split) -> List[QARecord]:
    test = split == "test"
    required = ["uid", "question"] + OPTION_KEYS + ([] if test else ["answer"])
    records = []
    for where, row in read_csv_rows(path, required, id_key="uid"):
        uid = row["uid"]
        records.append(QARecord(
            vid=uid, qid=uid, question=row["question"], options=[row[k] for k in OPTION_KEYS],
            answer=parse_answer(row.get("answer"), N_OPTIONS, where, uid, allow_none=test),
            source=where))
    return records


def _read_official(root, split) -> List[QARecord]:
    qpath, apath = questions_path(root), answers_path(root)
    questions = list(json_objects(qpath))
    if os.path.isfile(apath):
        answers = load_json(apath)
        if not isinstance(answers, dict):
            raise DataError(f"{apath}: expected a JSON object q_uid -> answer index")
    elif split == "test":
        answers = {}
    else:
        raise MissingFileError(f"EgoSchema {split} needs the public answers: {apath} not found")
    records = []
    for where, item in questions:
        uid = str(require(item, "q_uid", where, None))
        if split != "test" and uid not in answers:
            continue
        answer = parse_answer(answers.get(uid), N_OPTIONS, f"{apath} (entry {uid})", uid, allow_none=True)
        records.append(QARecord(
            vid=uid, qid=uid, question=require(item, "question", where, uid),
            options=[require(item, k, where, uid) for k in OFFICIAL_OPTION_KEYS], answer=answer,
            source=where))
    if not records:
        raise DataError(f"EgoSchema {split}: none of the {len(questions)} questions in {qpath} have an "
                        f"answer in {apath}")
    return records


def read_records(root, split) -> List[QARecord]:
    if split not in SPLITS:
        raise DataError(f"EgoSchema split must be one of {SPLITS}, not {split!r}")
    cp = csv_path(root, split)
    if os.path.isfile(cp):
        return _read_csv(cp, split)
    if os.path.isfile(questions_path(root)):
        return _read_official(root, split)
    raise MissingFileError(f"EgoSchema {split}: neither {cp} nor {questions_path(root)} exists")
