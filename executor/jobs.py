"""The unified job view behind /api/jobs (API.md §2.11): queue items and history entries
as one kind of object, with filtering, sorting and paging."""
from __future__ import annotations

PENDING, IN_PROGRESS, COMPLETED, FAILED = "pending", "in_progress", "completed", "failed"
ALL_STATUSES = [PENDING, IN_PROGRESS, COMPLETED, FAILED]
PREVIEWABLE = {"images", "video", "audio"}
THREE_D = (".obj", ".fbx", ".gltf", ".glb")


def _pruned(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def _meta(extra_data: dict):
    workflow = (extra_data.get("extra_pnginfo") or {}).get("workflow") or {}
    return extra_data.get("create_time"), workflow.get("id") if isinstance(workflow, dict) else None


def from_queue_item(item, status: str) -> dict:
    priority, prompt_id, _, extra_data, _ = item[:5]
    create_time, workflow_id = _meta(extra_data)
    return _pruned({"id": prompt_id, "status": status, "priority": priority, "create_time": create_time,
                    "outputs_count": 0, "workflow_id": workflow_id})


def is_previewable(media_type: str, item: dict) -> bool:
    if media_type in PREVIEWABLE:
        return True
    fmt = item.get("format", "") or ""
    if fmt.startswith(("video/", "audio/")):
        return True
    return item.get("filename", "").lower().endswith(THREE_D)


def outputs_summary(outputs: dict):
    """(number of output items, the preview item preferring type "output")."""
    count, preview, fallback = 0, None, None
    for node_id, node_outputs in outputs.items():
        if not isinstance(node_outputs, dict):
            continue
        for media_type, items in node_outputs.items():
            if media_type == "animated" or not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, dict):
                    continue
                count += 1
                if preview is None and is_previewable(media_type, item):
                    enriched = {**item, "nodeId": node_id, "mediaType": media_type}
                    if item.get("type") == "output":
                        preview = enriched
                    elif fallback is None:
                        fallback = enriched
    return count, preview or fallback


def from_history(prompt_id: str, entry: dict, include_outputs: bool = False) -> dict:
    priority, _, prompt, extra_data, _ = entry["prompt"][:5]
    create_time, workflow_id = _meta(extra_data)
    status_info = entry.get("status") or {}
    status = FAILED if status_info.get("status_str") == "error" else COMPLETED
    outputs = entry.get("outputs", {})
    count, preview = outputs_summary(outputs)
    start = end = error = None
    for message in status_info.get("messages", []):
        if isinstance(message, (list, tuple)) and len(message) >= 2 and isinstance(message[1], dict):
            name, data = message[0], message[1]
            if name == "execution_start":
                start = data.get("timestamp")
            elif name in ("execution_success", "execution_error", "execution_interrupted"):
                end = data.get("timestamp")
                if name == "execution_error":
                    error = data
    job = _pruned({"id": prompt_id, "status": status, "priority": priority, "create_time": create_time,
                   "execution_start_time": start, "execution_end_time": end, "execution_error": error,
                   "outputs_count": count, "preview_output": preview, "workflow_id": workflow_id})
    if include_outputs:
        job["outputs"] = outputs
        job["execution_status"] = status_info
        job["workflow"] = {"prompt": prompt, "extra_data": extra_data}
    return job


def find_job(prompt_id, running, pending, history):
    if prompt_id in history:
        return from_history(prompt_id, history[prompt_id], include_outputs=True)
    for item in running:
        if item[1] == prompt_id:
            return from_queue_item(item, IN_PROGRESS)
    for item in pending:
        if item[1] == prompt_id:
            return from_queue_item(item, PENDING)
    return None


def sort_jobs(jobs: list[dict], sort_by: str, sort_order: str) -> list[dict]:
    """created_at: by create_time; execution_duration: end - start (0 when unknown). Stable."""
    if sort_by == "execution_duration":
        def key(j):
            s, e = j.get("execution_start_time", 0), j.get("execution_end_time", 0)
            return e - s if s and e else 0
    else:
        def key(j):
            return j.get("create_time", 0)
    return sorted(jobs, key=key, reverse=sort_order == "desc")


def list_jobs(running, pending, history, statuses=None, workflow_id=None, sort_by="created_at",
              sort_order="desc", limit=None, offset=0):
    """(page of jobs, total after filtering)."""
    statuses = statuses or ALL_STATUSES
    jobs = []
    if IN_PROGRESS in statuses:
        jobs += [from_queue_item(i, IN_PROGRESS) for i in running]
    if PENDING in statuses:
        jobs += [from_queue_item(i, PENDING) for i in pending]
    if COMPLETED in statuses or FAILED in statuses:
        for pid, entry in history.items():
            job = from_history(pid, entry)
            if job["status"] in statuses:
                jobs.append(job)
    if workflow_id:
        jobs = [j for j in jobs if j.get("workflow_id") == workflow_id]
    jobs = sort_jobs(jobs, sort_by, sort_order)
    total = len(jobs)
    offset = max(offset or 0, 0)
    jobs = jobs[offset:] if limit is None else jobs[offset:offset + limit]
    return jobs, total
