# The global descriptors are kept in the row (STORAGE MAIN) instead of TOAST: a 1280-d
# halfvec (2.5 kB) is above TOAST's 2 kB threshold, so each one was moved out of line and
# every shortlist read of a row cost its heap page, a TOAST index lookup and TOAST pages;
# a catalog larger than the memory paid those as random disk reads (bench/README.md,
# scale.py at 1M). MAIN, not PLAIN: a row that cannot fit a page (a 4000-d descriptor
# with its neighbour lists) may still go out of line. Rows written before stay where they
# are until they are written again (a reindex, a DBA refresh).

from django.db import migrations

# The DBA row's short neighbour lists too: TOAST moves every out-of-line-able column of a
# row above 2 kB out, however small, before it gives up on the descriptor.
COLUMNS = (
    ("retrieval_imagedescriptor", "embedding"),
    ("retrieval_descriptoraugmentation", "embedding"),
    ("retrieval_descriptoraugmentation", "neighbours"),
    ("retrieval_descriptoraugmentation", "similarities"),
)


class Migration(migrations.Migration):
    dependencies = [("retrieval", "0006_descriptor_augmentation_table")]

    operations = [
        migrations.RunSQL(
            sql=[f"ALTER TABLE {table} ALTER COLUMN {column} SET STORAGE MAIN" for table, column in COLUMNS],
            reverse_sql=[f"ALTER TABLE {table} ALTER COLUMN {column} SET STORAGE EXTENDED" for table, column in COLUMNS],
        )
    ]
