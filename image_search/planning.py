"""The one ingest planner: what each upload needs, decided against the metadata.

Batches (batch uploads, backfill jobs) are planned before decoding and embedding, so a rerun
over content that is already indexed costs two metadata queries per batch and no forward pass.
A single upload is planned by the Indexer as it writes (IndexService.index): one trip fewer
for every new image, at the price of a forward pass for a repeated one.
  new        needs bytes, a vector and a row
  known      the content already has its bytes and vector; needs only a row
  duplicate  this meta_uuid already holds these bytes, or (adopt_known off) the content is
             indexed under another meta_uuid already
  conflict   this meta_uuid already holds *other* bytes: refused, never overwritten
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from image_search.records import ImageRecord, milvus_id_for
from image_search.stores.base import MetadataStore

PlanStatus = Literal["new", "known", "duplicate", "conflict"]


@dataclass(frozen=True)
class PlanItem:
    meta_uuid: str
    sha256: str
    # True: a client named this meta_uuid, so content stored under another one gets a second
    # row. False (a backfill's default id): such content is a duplicate and is skipped.
    adopt_known: bool = True


@dataclass(frozen=True)
class Plan:
    status: PlanStatus
    reason: str = ""
    # A row with the same content, when there is one (its width and height serve "known").
    same_content: ImageRecord | None = None

    @property
    def writes(self) -> bool:
        """Whether the item gets a row: new or known content; the others are refused."""
        return self.status in ("new", "known")


def plan_items(metadata: MetadataStore, items: Sequence[PlanItem]) -> list[Plan]:
    """Classify items in order; a later item sees what the earlier ones in the batch will write."""
    if not items:
        return []
    taken = metadata.existing_uuids(sorted({it.meta_uuid for it in items}))
    by_id = metadata.by_milvus_ids(sorted({milvus_id_for(it.sha256) for it in items}))
    planned: dict[str, str] = {}  # meta_uuid -> sha256 planned earlier in this batch
    out: list[Plan] = []
    for it in items:
        same = [r for r in by_id.get(milvus_id_for(it.sha256), []) if r.sha256 == it.sha256]
        plan = _classify(it, same, it.meta_uuid in taken, planned)
        if plan.writes:
            planned[it.meta_uuid] = it.sha256
        out.append(plan)
    return out


def _classify(
    it: PlanItem, same: list[ImageRecord], uuid_taken: bool, planned: dict[str, str]
) -> Plan:
    uuid, first = it.meta_uuid, (same[0] if same else None)
    if any(r.meta_uuid == uuid for r in same) or planned.get(uuid) == it.sha256:
        return Plan("duplicate", f"meta_uuid {uuid} already holds these bytes", first)
    if uuid_taken or uuid in planned:
        return Plan("conflict", f"meta_uuid {uuid} already holds other content", first)
    if first is not None and not it.adopt_known:
        return Plan("duplicate", f"content already indexed as {first.meta_uuid}", first)
    if first is not None:
        return Plan("known", "", first)
    return Plan("new")
