"""Launch ``main.py`` training as a SLURM job (or locally) with submitit, with preemption/requeue.

Every ``main.py`` flag is accepted, plus the job flags below. One task runs per GPU; inside the
job, each task takes its global rank, local rank, world size and master address from submitit's
``JobEnvironment`` and ``main.py`` joins the process group through ``env://`` (NCCL on GPUs,
gloo with ``--device cpu``). On preemption or timeout SLURM signals the job, submitit calls
:meth:`Trainer.checkpoint`, and the same job is requeued resuming from the newest checkpoint in
the output folder. The signal waits for the next optimizer-step boundary, where main.py writes a
step checkpoint (``checkpoint-step.pth``) first, so the requeued job continues at that step: nothing
trained is lost (``utils.defer_signal``, ``main.StepCheckpointer``). A handler that exits in the
middle of a checkpoint write would break the file, and one inside TensorBoard's writer would leave
the process unable to exit.

Examples::

    python run_with_submitit.py --nodes 4 --ngpus 8 --model hornet_tiny_7x7 --drop_path 0.2 \\
        --clip_grad 100 --batch_size 128 --lr 4e-3 --update_freq 1 --model_ema true \\
        --model_ema_eval true --data_path /path/to/imagenet-1k --job_dir ./logs/hornet_tiny_7x7
    # the same script on a workstation: 2 processes on CPU, waits for the result
    python run_with_submitit.py --cluster local --nodes 1 --ngpus 2 --device cpu ... --job_dir ./logs/x

``--job_dir`` holds submitit's per-task logs (``<job id>_<task>_log.out/err``) and, unless
``--output_dir`` is given, the checkpoints, ``log.txt`` and TensorBoard events. A ``%j`` in it is
replaced by the job id.
"""
import argparse
import copy
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

import submitit
import torch

import main as trainer_main
import run_dir
import utils

_REPO = os.path.dirname(os.path.abspath(__file__))


class SubmitError(utils.TrainingError):
    """A launch problem the user can fix; reported as one line and exit status 2."""


def get_args_parser() -> argparse.ArgumentParser:
    """``main.py``'s flags plus the job flags."""
    parser = utils.OneLineArgumentParser('Submitit for HorNet', parents=[trainer_main.get_args_parser()])
    g = parser.add_argument_group('job')
    g.add_argument('--ngpus', default=8, type=int,
                   help='GPUs per node = tasks per node (with --device cpu: processes per node, no GPU asked)')
    g.add_argument('--nodes', default=2, type=int, help='number of nodes')
    g.add_argument('--timeout', default=72, type=int,
                   help='job time limit in HOURS (default 72, as the original); sbatch --time = 60 x this')
    g.add_argument('--job_dir', default='', type=str,
                   help='job folder (default: ./logs/submitit/%%j; %%j is the job id)')
    g.add_argument('--partition', default='learnlab', type=str, help='SLURM partition')
    g.add_argument('--use_volta32', type=utils.str2bool, nargs='?', const=True, default=True,
                   help='ask for 32 GB V100s (SLURM constraint volta32gb); on by default: '
                        '"--use_volta32 false" or --no_volta32 turns it off')
    g.add_argument('--no_volta32', dest='use_volta32', action='store_false',
                   help='(new) no volta32gb constraint (same as --use_volta32 false)')
    g.add_argument('--comment', default='', type=str, help='SLURM comment, e.g. for priority requests')
    g.add_argument('--cluster', default=None, choices=('slurm', 'local', 'debug'),
                   help='(new) where to run: slurm, local (processes on this machine) or debug '
                        '(one task in this process); default: SLURM if srun exists, else local')
    g.add_argument('--cpus_per_task', default=10, type=int, help='(new) CPU cores per task')
    g.add_argument('--mem_per_gpu', default=40, type=int, help='(new) memory in GB per GPU (per task)')
    g.add_argument('--signal_delay', default=120, type=int,
                   help='(new) seconds before the time limit at which SLURM signals the job to checkpoint')
    g.add_argument('--max_requeue', default=30, type=int,
                   help='(new) how often a job may be requeued after timing out')
    g.add_argument('--job_name', default='', type=str, help='(new) job name (default: --model)')
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = get_args_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    repair = getattr(trainer_main, '_repair_argv', None)  # same shell-slip fixes as main.py
    return parser.parse_args(repair(argv, parser) if repair else argv)


class Trainer:
    """The submitted callable: runs ``main.main`` in each task; requeues itself on preemption."""

    def __init__(self, args: argparse.Namespace):
        self.args = args

    def __call__(self) -> dict[str, Any]:
        job_env = submitit.JobEnvironment()
        # submitit's preemption/timeout handler checkpoints and exits: never in the middle of a
        # step, a checkpoint write or a TensorBoard update (see utils.defer_signal)
        utils.defer_signal(job_env._usr_sig(), announce=True)
        self._resolve_paths(job_env.job_id)
        self._export_distributed_env(job_env)
        # main() fills args (rank, resume, start epoch...); keep ours pristine for checkpoint()
        stats = trainer_main.main(copy.deepcopy(self.args))
        return dict(stats, rank=utils.get_rank(), world_size=utils.get_world_size(), job_id=job_env.job_id)

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on rank 0 when the job is preempted or times out: the requeued job
        resumes from the newest complete checkpoint in the output folder (the step checkpoint just
        written, inside the epoch); main.py then trims log.txt back to that epoch, so no step is
        lost and no epoch logged twice."""
        args = copy.deepcopy(self.args)
        args.auto_resume = True
        latest = run_dir.find_latest_checkpoint(args.output_dir) if args.output_dir else None
        if latest:
            args.resume = latest  # also overrides a --resume given at launch
        print(f'[submitit] requeuing job; will resume from {latest or "scratch"}', flush=True)
        return submitit.helpers.DelayedSubmission(type(self)(args))

    def _resolve_paths(self, job_id: str) -> None:
        for name in ('job_dir', 'output_dir', 'log_dir'):
            value = getattr(self.args, name, None)
            if value:
                setattr(self.args, name, value.replace('%j', str(job_id)))

    @staticmethod
    def _export_distributed_env(job_env: submitit.JobEnvironment) -> None:
        """RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT from the job, for ``env://``."""
        if job_env.num_tasks <= 1:
            return  # a single process: main.py runs without a process group
        dist_env = submitit.helpers.TorchDistributedEnvironment()
        if job_env.cluster in ('local', 'debug'):
            dist_env.master_addr = '127.0.0.1'  # one machine: no need to resolve its host name
        # each task keeps all GPUs of its node visible; main.py picks cuda:LOCAL_RANK
        dist_env.export(set_cuda_visible_devices=False, overwrite=True)
        print(f'[submitit] task {dist_env.rank}/{dist_env.world_size} (local rank {dist_env.local_rank}) '
              f'on {job_env.hostname}, master {dist_env.master_addr}:{dist_env.master_port}', flush=True)


def _check_job_dir(job_dir: str) -> None:
    """Create the job folder (the part before any %j) and make sure we can write into it."""
    base = os.path.dirname(job_dir.split('%j')[0]) if '%j' in job_dir else job_dir
    try:
        os.makedirs(base, exist_ok=True)
        probe = os.path.join(base, f'.write_test_{os.getpid()}')
        with open(probe, 'w'):
            pass
        os.remove(probe)
    except OSError as e:
        raise SubmitError(f'--job_dir {job_dir}: cannot create or write {base} ({e.strerror or e})') from None


def check_launch(args: argparse.Namespace) -> str:
    """The cluster to submit to, after the checks of the flags alone (run before the job folder is
    created).

    Raises:
        SubmitError: no SLURM for ``--cluster slurm``, counts or ``--timeout`` below 1, several nodes
            for ``--cluster local``.
    """
    if args.cluster == 'slurm' and not (shutil.which('sbatch') and shutil.which('srun')):
        raise SubmitError('--cluster slurm, but SLURM is not available here (no sbatch/srun on PATH); '
                          'run on a SLURM login node, or use --cluster local to run on this machine')
    if args.ngpus < 1 or args.nodes < 1:
        raise SubmitError('--ngpus and --nodes must be at least 1')
    if args.timeout < 1:  # submitit would pass --time 0 (no limit on some clusters, rejected on others)
        raise SubmitError(f'--timeout is the job\'s time limit in hours and must be at least 1, got {args.timeout}')
    cluster = args.cluster or submitit.AutoExecutor.which()
    if cluster == 'local' and args.nodes > 1:
        raise SubmitError(f'--cluster local runs on this machine only; use --nodes 1 (got {args.nodes})')
    return cluster


def build_executor(args: argparse.Namespace) -> submitit.Executor:
    """The submitit executor for ``args.cluster`` with the job's resources; checks the flags before
    it creates the job folder."""
    cluster = check_launch(args)
    _check_job_dir(args.job_dir)
    if cluster in ('local', 'debug') and str(args.device).startswith('cuda'):
        # the tasks run here: without enough GPUs each would fail with a traceback in its log
        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if found < args.ngpus:
            raise SubmitError(f'--device {args.device} with --ngpus {args.ngpus}, but this machine has {found} '
                              f'visible GPU(s) and --cluster {cluster} runs here; pass --device cpu, or '
                              f'--ngpus {found}' if found else
                              f'--device {args.device}, but this machine has no visible GPU and --cluster '
                              f'{cluster} runs here; pass --device cpu')
    executor = submitit.AutoExecutor(folder=args.job_dir, cluster=cluster,
                                     slurm_max_num_timeout=args.max_requeue)
    use_gpus = str(args.device).startswith('cuda')
    slurm: dict[str, Any] = dict(slurm_partition=args.partition, slurm_signal_delay_s=args.signal_delay)
    if args.use_volta32:
        slurm['slurm_constraint'] = 'volta32gb'
    if args.comment:
        slurm['slurm_comment'] = args.comment
    executor.update_parameters(
        name=args.job_name or args.model,
        nodes=args.nodes,
        tasks_per_node=args.ngpus,  # one task per GPU
        gpus_per_node=args.ngpus if use_gpus else 0,
        cpus_per_task=args.cpus_per_task,
        mem_gb=args.mem_per_gpu * args.ngpus,
        timeout_min=60 * args.timeout,  # --timeout is in hours
        **slurm,
    )
    return executor


def submit(args: argparse.Namespace) -> submitit.Job:
    """Validate ``args``, point the outputs at the job folder and submit one :class:`Trainer` job."""
    if not args.job_dir:
        args.job_dir = os.path.join('logs', 'submitit', '%j')
    args.job_dir = os.path.abspath(args.job_dir)
    if not args.output_dir:
        args.output_dir = args.job_dir
    args.output_dir = os.path.abspath(args.output_dir)
    if args.log_dir:
        args.log_dir = os.path.abspath(args.log_dir)
    executor = build_executor(args)
    # The tasks unpickle Trainer and import main/utils by name, from wherever the job starts: the
    # job inherits the submitting environment, so put the repository on its PYTHONPATH for the submission.
    saved = os.environ.get('PYTHONPATH')
    os.environ['PYTHONPATH'] = os.pathsep.join([_REPO] + ([saved] if saved else []))
    try:
        return executor.submit(Trainer(args))
    finally:
        if saved is None:
            del os.environ['PYTHONPATH']
        else:
            os.environ['PYTHONPATH'] = saved


@utils.exits_on_user_error()
def main(argv: Sequence[str] | None = None) -> int:
    """Submit; for local and debug runs also wait for the result. Returns the exit status."""
    args = parse_args(argv)
    try:
        job = submit(args)
    except SubmitError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    folder = args.job_dir.replace('%j', str(job.job_id))
    print(f'Submitted job {job.job_id} ({args.nodes} node(s) x {args.ngpus} task(s)); '
          f'logs in {folder}, checkpoints in {args.output_dir.replace("%j", str(job.job_id))}', flush=True)
    if isinstance(job, submitit.SlurmJob):
        return 0
    try:  # on this machine: wait, so the command ends when training does
        results: list[dict[str, Any]] = job.results()
    except Exception as e:  # a task failed: its traceback is in the task's log file
        print(f'error: job {job.job_id} failed ({type(e).__name__}); see {job.paths.stderr}:\n{e}', file=sys.stderr)
        return 1
    final = results[0] if results else {}
    shown = {k: v for k, v in final.items() if k in ('train_loss', 'test_acc1', 'epoch', 'world_size')}
    print(f'Job {job.job_id} finished: {shown}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
