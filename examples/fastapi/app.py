"""
A FastAPI app as a Lambda function behind a Function URL.

Mangum turns each Function URL event (payload format 2.0) into an ASGI
request and FastAPI's answer into the result Lambda maps back to HTTP, so
the same code runs on AWS behind a Function URL and here behind
lambdarapid's FUNCTION_URL_PORT.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from mangum import Mangum
from pydantic import BaseModel

app = FastAPI(title="lambdarapid Function URL example")

ITEMS: list[dict[str, Any]] = [
    {"id": 1, "name": "apple", "tags": ["fruit", "red"]},
    {"id": 2, "name": "banana", "tags": ["fruit", "yellow"]},
    {"id": 3, "name": "brick", "tags": ["red"]},
]

LOGO = (Path(__file__).parent / "logo.png").read_bytes()

# The page builds its list from a second request through the same URL.
PAGE = """<!doctype html>
<html>
<head><meta charset="utf-8"><title>FastAPI on lambdarapid</title></head>
<body>
<h1 id="title">Hello from a Function URL</h1>
<img src="/logo.png" alt="logo">
<ul id="fruit"></ul>
<p id="status">loading</p>
<script>
fetch("/items?tag=fruit")
  .then((response) => response.json())
  .then((found) => {
    const list = document.getElementById("fruit");
    for (const item of found.items) {
      const entry = document.createElement("li");
      entry.textContent = item.name;
      list.append(entry);
    }
    document.getElementById("status").textContent = found.items.length + " fruit";
  })
  .catch((error) => {
    document.getElementById("status").textContent = "failed: " + error;
  });
</script>
</body>
</html>
"""


class NewItem(BaseModel):
    name: str
    price: float
    quantity: int = 1


@app.get("/", response_class=HTMLResponse)
def index() -> str:
    return PAGE


@app.get("/items")
def list_items(q: str | None = None, tag: list[str] = Query(default=[])) -> dict[str, Any]:
    """Items whose name contains q and that carry every tag (repeat it: ?tag=a&tag=b)."""
    found = [
        item
        for item in ITEMS
        if (q is None or q in item["name"]) and all(t in item["tags"] for t in tag)
    ]
    return {"q": q, "tags": tag, "items": found}


@app.get("/items/{item_id}")
def get_item(item_id: int) -> dict[str, Any]:
    for item in ITEMS:
        if item["id"] == item_id:
            return item
    raise HTTPException(status_code=404, detail=f"no item {item_id}")


@app.post("/items", status_code=201)
def create_item(item: NewItem) -> dict[str, Any]:
    return {**item.model_dump(), "total": round(item.price * item.quantity, 2)}


@app.get("/cookies/set")
def set_cookies() -> Response:
    """Two cookies: on the wire, two Set-Cookie headers (one Expires date has a comma)."""
    response = JSONResponse({"set": ["flavour", "session"]})
    response.set_cookie("flavour", "chocolate")
    response.set_cookie(
        "session", "abc123", expires=datetime(2030, 1, 1, tzinfo=timezone.utc), httponly=True
    )
    return response


@app.get("/cookies")
def get_cookies(request: Request) -> dict[str, str]:
    """The cookies the browser sent back."""
    return dict(request.cookies)


@app.get("/logo.png")
def logo() -> Response:
    """Binary content: Mangum base64-encodes it, Lambda decodes it back to these bytes."""
    return Response(content=LOGO, media_type="image/png")


@app.get("/whoami")
def whoami(request: Request) -> dict[str, Any]:
    """What the function saw: its request id, the URL it was called at, the caller."""
    context = request.scope["aws.context"]
    return {
        "request_id": context.aws_request_id,
        "function_name": context.function_name,
        "url": str(request.url),
        "client": request.client.host if request.client else None,
        "user_agent": request.headers.get("user-agent"),
    }


handler = Mangum(app, lifespan="off")
