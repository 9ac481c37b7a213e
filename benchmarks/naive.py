"""Section 7, for contrast: the naive Spark way many published versions take: a Keras model rebuilt for every
batch, images read from their paths one by one, resized in Pillow. Timed from paths to features, in a child
process with its own local Spark session."""

from __future__ import annotations

import argparse
import time

from benchmarks.common import child_main, child_session, dataset, image_files


def measure(args: argparse.Namespace) -> dict[str, object]:
    spark = child_session()
    folder = dataset(args, max(args.naive_count, 320))
    paths = [str(p) for p in image_files(folder)[: args.naive_count]]
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(args.batch_size))
    frame = spark.createDataFrame([(p,) for p in paths], "path string").repartition(
        spark.sparkContext.defaultParallelism
    )
    size, model_name, alpha = args.image_size, args.model, args.alpha

    def featurize(batches):
        import numpy as np
        import pandas as pd
        from PIL import Image

        from fruits import models

        spec = models.get_spec(model_name)
        for batch in batches:
            import keras

            kwargs = {"alpha": alpha} if spec.has_alpha else {}
            model = getattr(keras.applications, spec.constructor)(  # rebuilt for every batch
                include_top=False, pooling="avg", weights=None, input_shape=(size, size, 3), **kwargs
            )
            arrays = []
            for path in batch["path"]:  # one by one, from the path
                with Image.open(path) as image:
                    arrays.append(np.asarray(image.convert("RGB").resize((size, size)), dtype=np.float32))
            x = models.preprocess_function(spec)(np.stack(arrays))
            features = model.predict(x, verbose=0)
            yield pd.DataFrame({"path": batch["path"], "n": [len(f) for f in features]})

    started = time.perf_counter()
    count = frame.mapInPandas(featurize, "path string, n int").count()
    seconds = time.perf_counter() - started
    spark.stop()
    return {"n": count, "seconds": round(seconds, 2), "images_per_s": round(count / seconds, 1)}


if __name__ == "__main__":
    child_main(measure)
