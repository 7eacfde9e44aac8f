"""The web page and HTTP API over a library index (`audiofind serve`).

`app` holds the FastAPI routes and the uvicorn runner, thin over `service` (the blocking library work:
caching, query batching, containment checks); `streaming` answers byte-range requests for a clip's file;
`errors` is the `ApiError` every layer raises; `web/` is the static page. Modules here may import the
ground floor, `audiofind.models` and `audiofind.library`, never `research` or `cli`.
"""
