# lambdarapid images. Targets:
#   docker build --target lambda-server -t lambdarapid/lambda-server .
#   docker build --target lambda-rapid  -t lambdarapid/lambda-rapid .
#   docker build --target executable    -t lambdarapid/executable .
#
# lambda-server: the Lambda Server (HTTP Invoke API -> AMQP-RPC).
# lambda-rapid:  the daemon in a slim Python image, as a base for Python functions
#                or to run one with a mounted task root.
# executable:    a self-contained /lambda-rapid (no Python needed) built on Amazon
#                Linux 2, so it runs in every Lambda base image (Node, Java, Go,
#                provided.al2/al2023); copy it in as /usr/local/bin/aws-lambda-rie.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY setup.py README.md ./
COPY lambdarapid ./lambdarapid
COPY twisted ./twisted
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS lambda-server
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER nobody
EXPOSE 8080
ENTRYPOINT ["lambda-server"]

FROM ${PYTHON_IMAGE} AS lambda-rapid
COPY --from=wheel /wheels /wheels
# The daemon lives in its own virtualenv, so a Python function never sees its packages.
RUN python -m venv /opt/lambdarapid \
 && /opt/lambdarapid/bin/pip install --no-cache-dir /wheels/*.whl \
 && ln -s /opt/lambdarapid/bin/lambda-rapid /usr/local/bin/lambda-rapid \
 && ln -s /opt/lambdarapid/bin/lambda-rapid /usr/local/bin/aws-lambda-rie \
 && pip install --no-cache-dir awslambdaric \
 && rm -rf /wheels
WORKDIR /var/task
EXPOSE 8080
ENTRYPOINT ["lambda-rapid", "python3", "-m", "awslambdaric"]
CMD ["echo.handler"]

FROM public.ecr.aws/lambda/python:3.11 AS executable-build
RUN yum install -y -q binutils && yum clean all
WORKDIR /src
COPY setup.py README.md ./
COPY lambdarapid ./lambdarapid
COPY twisted ./twisted
COPY packaging ./packaging
RUN python3 -m venv /build && /build/bin/pip install --no-cache-dir . pyinstaller \
 && PATH=/build/bin:$PATH packaging/build-executable /out

FROM scratch AS executable
COPY --from=executable-build /out/lambda-rapid /lambda-rapid
