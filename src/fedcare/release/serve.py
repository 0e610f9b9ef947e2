"""``fedcare serve``: one patient in, risk and reasons out, as JSON over HTTP (FastAPI).

``POST /api/predict`` takes one patient as a JSON object of the model's predictors and
answers the risk and the features behind it (as ``fedcare predict``); a patient the
schema refuses gets 422 with each field and reason. ``GET /api/model`` names the model,
its bundle digest and predictors. Bound to 127.0.0.1 by default; any other address needs
a token (``Authorization: Bearer``), the dashboard's guard (:mod:`fedcare.dashboard.web`).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from fastapi import Body, FastAPI
from fastapi.responses import JSONResponse

from fedcare.dashboard.web import add_common
from fedcare.release.bundle import Bundle
from fedcare.release.predict import predict_rows

__all__ = ["create_serve_app"]

#: Largest patient object accepted (fields).
MAX_FIELDS = 500


def create_serve_app(bundle: Bundle, *, token: str | None = None) -> FastAPI:
    """The prediction API of ``bundle`` (token required on every call when given)."""
    app = FastAPI(title="fedcare serve", docs_url=None, redoc_url=None, openapi_url=None)
    add_common(app, token)
    features = list(bundle.preprocessing.get("features", []))

    @app.get("/api/model")
    def model() -> dict[str, Any]:
        return {
            "name": bundle.card.get("model_details", {}).get("name"),
            "digest": bundle.digest,
            "task": bundle.meta["task"],
            "predictors": features,
            "categorical": bundle.preprocessing.get("categorical", {}),
        }

    @app.post("/api/predict")
    def predict(patient: dict[str, Any] = Body(...)) -> JSONResponse:  # noqa: B008 - FastAPI's idiom
        if len(patient) > MAX_FIELDS:
            return JSONResponse({"error": f"at most {MAX_FIELDS} fields"}, status_code=413)
        bad = [k for k, v in patient.items() if v is not None and not isinstance(v, str | int | float | bool)]
        if bad:
            return JSONResponse({"problems": [{"field": k, "reason": "not a scalar"} for k in bad]}, status_code=422)
        frame = pd.DataFrame([{f: patient.get(f) for f in features}], dtype=object)
        frame = frame.map(lambda v: "" if v is None else str(v))
        report = predict_rows(bundle, frame)
        if report.problems:
            problems = [{"field": p.field, "reason": p.reason} for p in report.problems]
            return JSONResponse({"problems": problems}, status_code=422)
        return JSONResponse({"prediction": report.predictions[0], "digest": bundle.digest})

    return app
