from setuptools import find_packages, setup

setup(
    name="lambdarapid",
    version="0.1.0",
    description=(
        "Lambda Runtime API Daemon and Lambda Server: run unmodified AWS Lambda "
        "container images anywhere, on Twisted"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["lambdarapid", "lambdarapid.*"]) + ["twisted.plugins"],
    package_data={"twisted.plugins": ["lambdarapid_plugins.py"]},
    install_requires=[
        "twisted>=24.7",
        "klein>=24.8",
        "httptools>=0.6",
        "orjson>=3.9",
        "pika>=1.3",
        "service-identity>=24.1",
        "pyopenssl",
        "prometheus_client>=0.20",
    ],
    extras_require={
        "test": [
            "awslambdaric>=3",
            "awscli",
            "boto3",
            "pyinstaller",
            "treq",
            "mypy",
            "mypy-zope",
            "pyyaml",
            # Lambda web apps, for the Function URL tests and example.
            "fastapi",
            "mangum",
            "aws-lambda-powertools",
        ],
    },
    entry_points={
        "console_scripts": [
            "lambda-rapid = lambdarapid.scripts:rapid",
            "lambda-server = lambdarapid.scripts:server",
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: System :: Distributed Computing",
    ],
)
