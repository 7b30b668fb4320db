"""Count the words of a text with PySpark.

Usage: spark-submit wordcount.py INPUT OUTPUT

INPUT is a text file or a folder of text files, OUTPUT a folder that must not
exist yet. On EMR both are usually s3:// URIs; the local emulator maps them to a
mirror of its S3. The result is one part file of ``word<TAB>count`` lines, the
most frequent word first (ties in alphabetical order). Words are runs of
letters, apostrophes inside a word kept ("don't"), compared in lower case.
"""

import re
import sys
from operator import add

WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")


def words(line):
    """The words of one line of text, in lower case."""
    return WORD.findall(line.lower())


def main(argv):
    if len(argv) != 3:
        print("usage: spark-submit wordcount.py INPUT OUTPUT", file=sys.stderr)
        return 2
    source, target = argv[1], argv[2]

    from pyspark.sql import SparkSession

    spark = SparkSession.builder.appName("wordcount").getOrCreate()
    try:
        counts = (
            spark.sparkContext.textFile(source)
            .flatMap(words)
            .map(lambda word: (word, 1))
            .reduceByKey(add)
            .sortBy(lambda pair: (-pair[1], pair[0]), numPartitions=1)
            .map(lambda pair: f"{pair[0]}\t{pair[1]}")
        )
        counts.saveAsTextFile(target)
        print(f"wrote the word counts of {source} to {target}")
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
