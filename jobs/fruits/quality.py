"""Quality report: how well a simple classifier separates the classes, with PCA features and with all.

Runs only when the input has Fruits-360's ``Training/`` and ``Test/`` splits: a multinomial logistic
regression (MLlib) is trained on the Training rows (a sample of 20,000 at most) and scored on the Test rows, once on the k principal
components and once on the full feature vectors, so users see how much the reduction keeps.
"""

from __future__ import annotations

from pyspark.ml.classification import LogisticRegression
from pyspark.ml.evaluation import MulticlassClassificationEvaluator
from pyspark.ml.feature import StringIndexer, VectorAssembler
from pyspark.ml.functions import array_to_vector
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from fruits.reduce import pc_columns

# Enough rows to measure what the reduction keeps; more only makes the report cost as much as featurizing.
MAX_TRAIN_ROWS = 20_000
MAX_TEST_ROWS = 20_000


def _accuracy(train: DataFrame, test: DataFrame, features_col: str) -> float:
    indexer = StringIndexer(inputCol="label", outputCol="label_index", handleInvalid="keep").fit(train)
    classifier = LogisticRegression(
        featuresCol=features_col,
        labelCol="label_index",
        family="multinomial",
        maxIter=50,
        regParam=1e-2,
        tol=1e-4,
    )
    model = classifier.fit(indexer.transform(train))
    scored = model.transform(indexer.transform(test))
    evaluator = MulticlassClassificationEvaluator(
        labelCol="label_index", predictionCol="prediction", metricName="accuracy"
    )
    return float(evaluator.evaluate(scored))


def report(rows: DataFrame, k: int) -> dict[str, object] | None:
    """Test accuracy on PCA features and on full features, or None when there are no Training/Test rows.

    ``rows`` has ``label``, ``split``, ``features`` (array) and ``pc_1..pc_k``.
    """
    counts = {row["split"]: row["count"] for row in rows.groupBy("split").count().collect()}  # 3 rows at most
    train_n, test_n = counts.get("Training", 0), counts.get("Test", 0)
    if not train_n or not test_n:
        return None
    assembled = VectorAssembler(inputCols=pc_columns(k), outputCol="pcs").transform(
        rows.withColumn("full", array_to_vector("features"))
    )
    train = assembled.where(F.col("split") == "Training")
    test = assembled.where(F.col("split") == "Test")
    if train_n > MAX_TRAIN_ROWS:
        train = train.sample(fraction=MAX_TRAIN_ROWS / train_n, seed=11)
    if test_n > MAX_TEST_ROWS:
        test = test.sample(fraction=MAX_TEST_ROWS / test_n, seed=13)
    train, test = train.cache(), test.cache()
    try:
        return {
            "classifier": "multinomial logistic regression (Spark MLlib), trained on Training, scored on Test",
            "train_images": train.count(),
            "test_images": test.count(),
            "test_accuracy_pca": _accuracy(train, test, "pcs"),
            "test_accuracy_full_features": _accuracy(train, test, "full"),
            "k": k,
        }
    finally:
        train.unpersist()
        test.unpersist()
