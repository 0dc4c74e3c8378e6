"""Video captioning sets, as the official files lay them out, with features from extract_features.py:

  MSR-VTT test: `<root>/msrvtt/test_videodatainfo.json` (`videos[].video_id` "videoNNNN", `sentences[]`
                `{video_id, caption}`); features `<root>/msrvtt/clipvitl14.pth`, keys video_id.
  VATEX val:    `<root>/vatex/vatex_validation_v1.0.json` (list of `{videoID, enCap: [captions]}`);
                features `<root>/vatex/clipvitl14.pth`, keys videoID.

One record per video, in file order, with its reference captions. Each set has one split, `test`
(VATEX's public validation set is the one captioning papers report). A video without references, a
sentence of a video the file does not list, or a video listed twice is a DataError naming it.
"""
import os
from dataclasses import dataclass
from typing import Dict, List

from util.errors import ConfigError, DataError

from .base import load_json

SPLITS = ("test",)
FILES = {"msrvtt": "test_videodatainfo.json", "vatex": "vatex_validation_v1.0.json"}


@dataclass
class CaptionRecord:
    key: str          # the video id: feature key and id in messages and outputs
    refs: List[str]   # reference captions
    source: str       # where it is in the annotation file

    def prompt_fields(self) -> dict:
        return {}


def annotation_path(root, dataset: str) -> str:
    return os.path.join(str(root), dataset, FILES[dataset])


def _caption(c, where: str) -> str:
    if not isinstance(c, str) or not c.strip():
        raise DataError(f"{where}: a caption must be a non-empty string, got {c!r}")
    return c


def read_msrvtt(path: str, need_refs: bool = True) -> List[CaptionRecord]:
    raw = load_json(path)
    videos, sentences = (raw.get("videos"), raw.get("sentences")) if isinstance(raw, dict) else (None, None)
    if not isinstance(videos, list) or not isinstance(sentences, list):
        raise DataError(f"{path}: expected an object with 'videos' and 'sentences' lists (MSR-VTT's "
                        f"test_videodatainfo.json)")
    records: Dict[str, CaptionRecord] = {}
    for i, v in enumerate(videos):
        where = f"{path}: videos[{i}]"
        if not isinstance(v, dict) or not isinstance(v.get("video_id"), str):
            raise DataError(f"{where}: no 'video_id'")
        vid = v["video_id"]
        if vid in records:
            raise DataError(f"{where}: video {vid} is listed twice (also at {records[vid].source})")
        records[vid] = CaptionRecord(vid, [], where)
    for i, s in enumerate(sentences):
        where = f"{path}: sentences[{i}]"
        vid = s.get("video_id") if isinstance(s, dict) else None
        if vid not in records:
            raise DataError(f"{where}: caption of video {vid!r}, which 'videos' does not list")
        records[vid].refs.append(_caption(s.get("caption"), f"{where} (video {vid})"))
    records = list(records.values())
    return _checked(records) if need_refs else records


def read_vatex(path: str, need_refs: bool = True) -> List[CaptionRecord]:
    raw = load_json(path)
    if not isinstance(raw, list):
        raise DataError(f"{path}: expected a list of {{videoID, enCap}} objects (VATEX's vatex_validation_v1.0.json)")
    records, seen = [], {}
    for i, v in enumerate(raw):
        where = f"{path}[{i}]"
        vid = v.get("videoID") if isinstance(v, dict) else None
        if not isinstance(vid, str):
            raise DataError(f"{where}: no 'videoID'")
        if vid in seen:
            raise DataError(f"{where}: video {vid} is listed twice (also at {seen[vid]})")
        seen[vid] = where
        caps = v.get("enCap")
        if not isinstance(caps, list):
            raise DataError(f"{where}: video {vid}: 'enCap' must be a list of English captions")
        records.append(CaptionRecord(vid, [_caption(c, f"{where} (video {vid})") for c in caps], where))
    return _checked(records) if need_refs else records


def _checked(records: List[CaptionRecord]) -> List[CaptionRecord]:
    bare = [r for r in records if not r.refs]
    if bare:
        raise DataError(f"{bare[0].source}: video {bare[0].key} has no reference caption "
                        f"({len(bare)} videos without any)")
    return records


def read_file(path: str, dataset: str, need_refs: bool = True) -> List[CaptionRecord]:
    """The videos of one annotation file; `need_refs`: every video must have a reference caption
    (evaluation; the extractor only needs the video list)."""
    return (read_msrvtt if dataset == "msrvtt" else read_vatex)(path, need_refs)


def read_records(root, dataset: str, split: str = "test") -> List[CaptionRecord]:
    if split not in SPLITS:
        raise ConfigError(f"{dataset} has one split, test (not {split!r})")
    return read_file(annotation_path(root, dataset), dataset)
