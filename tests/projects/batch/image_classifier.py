"""Cortex's test/batch/image-classifier, its model replaced by a tiny one: an "image" is raw RGB bytes and its class
the channel with the highest mean. Reads the images from S3, writes <dest_s3_dir>/<job_id>/<batch_id>.json, and
aggregates them in on_job_complete, as Cortex's did."""
import json
import os
import re

import boto3
import numpy as np


class PythonPredictor:
    def __init__(self, config, job_spec):
        if len(config.get("dest_s3_dir", "")) == 0:
            raise Exception("'dest_s3_dir' field was not provided in job submission")
        self.labels = [name + config["labels"]["suffix"] for name in config["labels"]["names"]]
        self.s3 = boto3.client("s3")
        self.bucket, self.key = re.match("s3://(.+?)/(.+)", config["dest_s3_dir"]).groups()
        self.key = os.path.join(self.key, job_spec["job_id"])

    def predict(self, payload, batch_id):
        results = []
        for image_url in payload:
            bucket, image_key = re.match("s3://(.+?)/(.+)", image_url).groups()
            image_bytes = self.s3.get_object(Bucket=bucket, Key=image_key)["Body"].read()
            pixels = np.frombuffer(image_bytes, dtype=np.uint8).reshape(-1, 3)
            results.append({"url": image_url, "class": self.labels[int(pixels.mean(axis=0).argmax())]})
        self.s3.put_object(Bucket=self.bucket, Key=f"{self.key}/{batch_id}.json", Body=json.dumps(results))

    def on_job_complete(self):
        all_results = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.key):
            for obj in page["Contents"]:
                body = self.s3.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"]
                all_results += json.loads(body.read().decode("utf8"))
        self.s3.put_object(Bucket=self.bucket, Key=os.path.join(self.key, "aggregated_results.json"),
                           Body=json.dumps(all_results))
