"""A local lmms-eval task on PyAV-written videos (tests/test_lmms.py): the videos are in $TOPA_LMMS_VIDEOS."""
import os


def doc_to_visual(doc):
    return [os.path.join(os.environ["TOPA_LMMS_VIDEOS"], doc["video"])]


def mc_text(doc, lmms_eval_specific_kwargs=None):
    """MVBench's wording in lmms-eval (tasks/mvbench/utils.py)."""
    options = "".join(f"({chr(65 + i)}) {c}\n" for i, c in enumerate(doc["candidates"]))
    return "Question:" + doc["question"] + "\nOption:\n" + options + "Only give the best option.\n"


def open_text(doc, lmms_eval_specific_kwargs=None):
    return f"Question: {doc['question']}\nAnswer:"


def mc_results(doc, results):
    return {"accuracy": float(results[0].strip() == doc["answer"])}


def open_results(doc, results):
    return {"answered": float(bool(results[0].strip()))}
