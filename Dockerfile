# comfyd on CUDA: the official PyTorch runtime image (torch, CUDA, cuDNN) plus comfyd.
#   docker build -t comfyd .
#   docker run --gpus all -p 8188:8188 -v $PWD/models:/app/models -v $PWD/output:/app/output comfyd
FROM pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies first, so a code change does not reinstall them. The image's torch already
# satisfies pyproject's torch requirement, so pip keeps that CUDA build.
WORKDIR /opt/comfyd
COPY pyproject.toml ./
RUN python -c "import subprocess, sys, tomllib; \
deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
subprocess.check_call([sys.executable, '-m', 'pip', 'install', *deps])"
# Upscale-model architectures; --no-deps so its torchvision pin cannot replace the image's torch.
RUN python -m pip install --no-deps spandrel==0.4.2

# The code lives apart from the data: /app/models holds weights and is a volume, while
# comfyd's own Python package of the same name stays importable from /opt/comfyd.
COPY . .
ENV PYTHONPATH=/opt/comfyd

# /app is the base directory (the server's working directory).
WORKDIR /app
RUN mkdir -p models/checkpoints models/loras models/vae models/embeddings models/controlnet \
             models/upscale_models input output user temp custom_nodes
VOLUME ["/app/models", "/app/input", "/app/output", "/app/user"]

EXPOSE 8188
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8188/system_stats', timeout=4)"
CMD ["python", "-m", "server", "--listen", "0.0.0.0", "--port", "8188"]
