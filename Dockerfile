# The hpo image: the trainer, the service and its CLI on a CUDA build of PyTorch.
FROM pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime
WORKDIR /app
COPY pyproject.toml README.md ./
COPY trainer ./trainer
COPY hpo ./hpo
COPY studies ./studies
RUN pip install --no-cache-dir -e '.[postgres]'
ENV HPO_ARTIFACTS=/artifacts HPO_CACHE_DIR=/cache
ENTRYPOINT ["hpo"]
