"""Create MLflow's artifact bucket in the object store once (compose's `create-bucket`).

Runs in the MLflow image (boto3 is there), so the control plane needs no extra client
image. Reads the same variables the MLflow server uses; exits 0 if the bucket exists.
"""

from __future__ import annotations

import os
import sys
import time

import boto3
from botocore.exceptions import ClientError, EndpointConnectionError


def main() -> int:
    bucket = os.environ["MLFLOW_BUCKET"]
    s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"])
    for attempt in range(30):  # the object store may still be starting
        try:
            s3.head_bucket(Bucket=bucket)
            print(f"bucket {bucket} exists")
            return 0
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in {"404", "NoSuchBucket"}:
                raise
            s3.create_bucket(Bucket=bucket)
            print(f"bucket {bucket} created")
            return 0
        except EndpointConnectionError:
            print(f"object store not reachable yet (attempt {attempt + 1})", file=sys.stderr)
            time.sleep(2)
    print("object store never answered", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
