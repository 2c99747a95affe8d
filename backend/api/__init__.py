"""The FastAPI service: REST API, live event stream, access and share links, and the frontend.

`backend.api.main.create_app(settings)` builds the app; `backend.api.main:app` is the one
uvicorn serves. The package never imports torch, kfac or the worker: the API stays light and
starts fast (a test checks it).
"""
