# GPU image for serving and fine-tuning NitroGen.
#
#   docker build -t nitrogen .
#   docker run --gpus all -p 5555:5555 -v $PWD/ckpt:/ckpt nitrogen \
#       nitrogen serve /ckpt/ng.pt --host 0.0.0.0 --curve-dir /ckpt/keys
#   docker run --gpus all -v $PWD/data:/data -v $PWD/runs:/runs nitrogen \
#       accelerate launch -m nitrogen.cli finetune --data /data --ckpt /data/ng.pt --out /runs/mygame
#
# The CUDA build of torch comes from the base image; pip keeps it because it satisfies the range.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/nitrogen
COPY pyproject.toml README.md ./
COPY nitrogen ./nitrogen
RUN pip install ".[serve,train]"

EXPOSE 5555
CMD ["nitrogen", "--help"]
