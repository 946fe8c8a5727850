"""Index test items: texts of three topics, every fourth with a picture."""

from __future__ import annotations


def records(count, image_files, prefix="t"):
    out = []
    for n in range(count):
        record = {"id": f"{prefix}{n}", "text": f"item number {n} about a {['red car', 'dog', 'house'][n % 3]}"}
        if n % 4 == 0:
            record["image"] = str(image_files[n % len(image_files)])
        out.append(record)
    return out
