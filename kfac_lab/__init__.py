"""kfac_lab: report a training script of your own to a kfac-lab server.

    import kfac_lab
    run = kfac_lab.init(experiment="my net", label="kfac lr=auto", config={"optimizer": "kfac"})
    for step, (x, y) in enumerate(loader):
        loss = optimizer.step(x, y)
        run.log(step, train_loss=float(loss))
        if step % 100 == 0:
            run.snapshot(model, x, y, loss="cross_entropy", optimizer=optimizer)
    run.finish()                      # or: with kfac_lab.init(...) as run: ...

The run appears on the experiment's page, live, like the runs the lab's workers train. URL and
token come from `KFAC_LAB_URL` and `KFAC_LAB_TOKEN`. Logging never blocks or raises: records
go to a queue, a background thread writes them to a spool on disk and sends them in batches,
retrying while the server is down; `finish()` flushes, and `kfac_lab.sync()` sends what a
process that ended too early left behind. Importing this package imports neither torch nor
any web or database library (torch only when a snapshot is taken).
"""

from kfac_lab.run import Run, init
from kfac_lab.sync import sync

__all__ = ["Run", "init", "sync"]
