"""The COCO caption evaluation, through `pycocoevalcap` (the package every captioning paper's numbers
come from): both sides PTB-tokenized (Stanford's PTBTokenizer, lower-cased, punctuation dropped), then
BLEU-1..4, METEOR 1.5, ROUGE-L and CIDEr-D, and SPICE on request. Values are pycocoevalcap's
(fractions; papers print them x 100).

The tokenizer, METEOR and SPICE are Java programs. `check_tools` runs before any generation starts and
refuses, naming what is missing, when Java, the package, or (for SPICE) its Stanford CoreNLP models
are absent: a metric is never computed another way under the same name.

    pip install -e ".[caption]"       # pycocoevalcap; plus a Java runtime (e.g. apt-get install default-jre)
"""
import os
import shutil
import subprocess
from typing import Dict, List

from util.errors import MissingFileError

METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
SPICE_JAR = os.path.join("lib", "stanford-corenlp-3.6.0.jar")  # what pycocoevalcap's SPICE downloads once


def _package_dir() -> str:
    try:
        import pycocoevalcap
    except ImportError:
        raise MissingFileError("the caption metrics need pycocoevalcap: pip install -e \".[caption]\" "
                               "(and a Java runtime)") from None
    return list(pycocoevalcap.__path__)[0]


def check_tools(spice: bool = False) -> None:
    """Java runs, pycocoevalcap is installed, its tokenizer may write its temporary file (it writes it
    into its own folder), and with `spice` the CoreNLP models are there; MissingFileError otherwise."""
    pkg = _package_dir()
    java = shutil.which("java")
    if java is None:
        raise MissingFileError("the COCO caption metrics need Java (the PTB tokenizer and METEOR are Java "
                               "programs) and there is no `java` on PATH: install a Java runtime (e.g. "
                               "apt-get install default-jre, or conda install openjdk)")
    r = subprocess.run([java, "-version"], capture_output=True, text=True)
    if r.returncode:
        raise MissingFileError(f"the COCO caption metrics need Java, and `{java} -version` fails: "
                               f"{(r.stderr or r.stdout).strip()[:200]}")
    tok_dir = os.path.join(pkg, "tokenizer")
    if not os.access(tok_dir, os.W_OK):
        raise MissingFileError(f"pycocoevalcap's PTB tokenizer writes a temporary file into {tok_dir}, which "
                               f"is not writable: install pycocoevalcap where you can write (e.g. a venv)")
    if spice and not os.path.isfile(os.path.join(pkg, "spice", SPICE_JAR)):
        raise MissingFileError(f"--spice needs Stanford CoreNLP 3.6.0 in {os.path.join(pkg, 'spice', 'lib')}: "
                               f"download it once with `python -m pycocoevalcap.spice.get_stanford_models` "
                               f"(about 400 MB; SPICE also wants Java 8)")


def coco_caption_metrics(refs: Dict[str, List[str]], preds: Dict[str, str], spice: bool = False) -> Dict[str, float]:
    """{metric: value} for one predicted caption per video (`preds`) against its references (`refs`),
    over the same video ids."""
    if set(refs) != set(preds):
        raise ValueError(f"references and predictions name other videos ({len(refs)} vs {len(preds)})")
    check_tools(spice)
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    keys = sorted(refs)
    gts = _tokenize(PTBTokenizer(), {k: refs[k] for k in keys})
    res = _tokenize(PTBTokenizer(), {k: [preds[k]] for k in keys})
    out = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out.update({f"BLEU-{n}": float(b) for n, b in enumerate(bleu, 1)})
    meteor = Meteor()
    try:
        out["METEOR"] = float(meteor.compute_score(gts, res)[0])
    finally:
        del meteor  # ends its Java process
    out["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    if spice:
        from pycocoevalcap.spice.spice import Spice
        try:
            out["SPICE"] = float(Spice().compute_score(gts, res)[0])
        except subprocess.CalledProcessError as e:
            raise MissingFileError(f"SPICE's Java program failed ({e}); it is known to need Java 8") from None
    return out


def _tokenize(tokenizer, captions: Dict[str, List[str]]) -> Dict[str, List[str]]:
    """PTB-tokenize; the Java tokenizer answers one line per caption, and a lost line would shift or
    drop captions silently, so the counts are checked."""
    got = tokenizer.tokenize({k: [{"caption": c} for c in cs] for k, cs in captions.items()})
    bad = [k for k, cs in captions.items() if len(got.get(k, ())) != len(cs)]
    if bad:
        raise RuntimeError(f"the PTB tokenizer returned {sum(map(len, got.values()))} lines for "
                           f"{sum(map(len, captions.values()))} captions (first short video: {bad[0]})")
    return got
