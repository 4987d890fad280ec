"""The stack Cortex shipped (v0.22–v0.25): FastAPI on uvicorn, a parse_payload middleware, predict on a thread pool.

    python benchmarks/cortex_style.py PROJECT_DIR PORT

Loads PythonPredictor from PROJECT_DIR/predictor.py and serves it at /predict the way Cortex's serve.py did.
"""
import asyncio
import importlib.util
import json
import sys
from concurrent.futures import ThreadPoolExecutor

import uvicorn
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response


def load_predictor(project_dir: str):
    spec = importlib.util.spec_from_file_location("cortex_predictor", f"{project_dir}/predictor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PythonPredictor(config={})


app = FastAPI()
predictor = load_predictor(sys.argv[1])
pool = ThreadPoolExecutor(1)  # threads_per_process: 1


@app.on_event("startup")
async def use_the_request_pool():
    asyncio.get_running_loop().set_default_executor(pool)


@app.middleware("http")
async def parse_payload(request: Request, call_next):
    if request.method == "POST":
        try:
            request.state.payload = await request.json()
        except json.JSONDecodeError as error:
            return JSONResponse(content={"error": str(error)}, status_code=400)
    return await call_next(request)


@app.post("/predict")
def predict(request: Request):
    prediction = predictor.predict(payload=request.state.payload)
    return Response(content=json.dumps(prediction), media_type="application/json")


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
