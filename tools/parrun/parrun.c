/*
 * parrun.c -- the launcher: `parrun -n N [--timeout S] [--] PROGRAM ARGS...` starts N ranks
 * of PROGRAM on this host with the environment par's bootstrap reads (RANK, WORLD_SIZE, ...,
 * PAR_STORE_ADDR, PAR_TOKEN, PAR_JOB_ID), hosts the rendezvous store in-process, prefixes
 * every output line with its rank, forwards SIGINT/SIGTERM/SIGHUP, and when one rank fails
 * stops the rest and says which rank failed first and how. Everything after the launch runs
 * in one poll() loop over the ranks' pipes and a self-pipe that the signal handler writes
 * to; nothing busy-polls. The ranks share one process group of their own, so stopping the
 * job also stops whatever the ranks started, and a terminal's Ctrl-C reaches them once,
 * through parrun. docs/parrun.md is the user's guide.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bootstrap/bootstrap.h"
#include "core/core.h"
#include "parrun.h"

extern char **environ;

#define MAX_RANKS 4096
/* Time the ranks get between SIGTERM and SIGKILL when the job is being stopped. */
#define GRACE_S 3.0
/* After the last rank exits, time for processes it left behind to close the pipes. */
#define DRAIN_S 2.0

static const char *usage_text =
    "usage: parrun -n N [--timeout S] [--bind-to core|none] [--] PROGRAM [ARGS...]\n"
    "\n"
    "Runs N ranks of PROGRAM on this host as one par job.\n"
    "\n"
    "  -n N          number of ranks (1..4096)\n"
    "  --timeout S   stop the whole job after S seconds (exit code 124)\n"
    "  --bind-to B   core (default): rank i runs on the (i mod C)-th of the C CPUs parrun\n"
    "                may use; none: let the kernel place them\n"
    "  -h, --help    show this help\n"
    "  --version     print parrun's version and exit\n"
    "\n"
    "Each rank gets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT,\n"
    "PAR_STORE_ADDR, PAR_TOKEN, PAR_JOB_ID and PAR_CPUS (MASTER_PORT is a free port for\n"
    "torch.distributed's env:// rendezvous; par's store is at PAR_STORE_ADDR). Output lines\n"
    "are prefixed with\n"
    "\"[rank] \". When a rank fails, the others are stopped and parrun exits with that\n"
    "rank's code (128+signal for a signal). See docs/parrun.md.\n";

typedef struct rank_proc {
  pid_t pid;
  int done;
  int status; /* from waitpid */
  pr_stream out, err;
} rank_proc;

typedef enum job_state { RUNNING, STOPPING } job_state;

static int sig_pipe[2] = {-1, -1};

static void on_signal(int sig) {
  int saved = errno;
  unsigned char b = (unsigned char)sig;
  /* The pipe is non-blocking: if it is full, earlier bytes already wake the loop. */
  ssize_t n = write(sig_pipe[1], &b, 1);
  (void)n;
  errno = saved;
}

static const char *sig_name(int sig, char *buf, size_t cap) {
  const char *abbrev = sigabbrev_np(sig);
  if (abbrev)
    snprintf(buf, cap, "SIG%s", abbrev);
  else
    snprintf(buf, cap, "signal %d", sig);
  return buf;
}

/* ---------------------------------------------------------------------------------------- */
/* Setup                                                                                    */
/* ---------------------------------------------------------------------------------------- */

static int random_hex(char *out, size_t nbytes) {
  unsigned char raw[32];
  if (nbytes > sizeof raw) return -1;
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  size_t got = 0;
  while (got < nbytes) {
    ssize_t n = read(fd, raw + got, nbytes - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += (size_t)n;
  }
  close(fd);
  if (got < nbytes) return -1;
  for (size_t i = 0; i < nbytes; i++) sprintf(out + 2 * i, "%02x", raw[i]);
  return 0;
}

/* Finds PROGRAM as execvp would, but in the parent: after fork only async-signal-safe calls
 * are allowed, since the store server thread may hold the allocator's lock. */
static char *resolve_program(const char *prog, int *err) {
  if (strchr(prog, '/')) {
    *err = access(prog, X_OK) == 0 ? 0 : errno;
    return *err ? NULL : strdup(prog);
  }
  const char *path = getenv("PATH");
  if (!path || !*path) path = "/usr/local/bin:/usr/bin:/bin";
  *err = ENOENT;
  for (const char *p = path;;) {
    const char *colon = strchr(p, ':');
    size_t dlen = colon ? (size_t)(colon - p) : strlen(p);
    size_t need = dlen + strlen(prog) + 3;
    char *cand = malloc(need);
    if (!cand) {
      *err = ENOMEM;
      return NULL;
    }
    snprintf(cand, need, "%.*s%s%s", (int)dlen, p, dlen ? "/" : "./", prog);
    struct stat st;
    if (stat(cand, &st) == 0 && S_ISREG(st.st_mode)) {
      if (access(cand, X_OK) == 0) {
        *err = 0;
        return cand;
      }
      *err = EACCES;
    }
    free(cand);
    if (!colon) break;
    p = colon + 1;
  }
  return NULL;
}

static const char *const job_vars[] = {
    "RANK",        "WORLD_SIZE",     "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
    "MASTER_PORT", "PAR_STORE_ADDR", "PAR_TOKEN",  "PAR_JOB_ID", "PAR_CPUS"};
#define NJOB_VARS (sizeof job_vars / sizeof job_vars[0])

/* Builds one rank's environment: parrun's own, minus any stale job variables, plus this
 * job's. Built before fork for the same reason as resolve_program. The strings from
 * env[*owned_from] on are ours to free (free_env); the rest belong to environ. */
static char **build_env(int rank, int n, int port, int master_port, const char *token,
                        const char *job_id, int cpus, size_t *owned_from) {
  size_t count = 0;
  while (environ[count]) count++;
  char **env = calloc(count + NJOB_VARS + 1, sizeof *env);
  if (!env) return NULL;
  size_t k = 0;
  for (size_t i = 0; i < count; i++) {
    int skip = 0;
    for (size_t j = 0; j < NJOB_VARS && !skip; j++) {
      size_t l = strlen(job_vars[j]);
      skip = !strncmp(environ[i], job_vars[j], l) && environ[i][l] == '=';
    }
    if (!skip) env[k++] = environ[i];
  }
  *owned_from = k;
  char vals[NJOB_VARS][128];
  snprintf(vals[0], sizeof vals[0], "RANK=%d", rank);
  snprintf(vals[1], sizeof vals[1], "WORLD_SIZE=%d", n);
  snprintf(vals[2], sizeof vals[2], "LOCAL_RANK=%d", rank);
  snprintf(vals[3], sizeof vals[3], "LOCAL_WORLD_SIZE=%d", n);
  snprintf(vals[4], sizeof vals[4], "MASTER_ADDR=127.0.0.1");
  snprintf(vals[5], sizeof vals[5], "MASTER_PORT=%d", master_port);
  snprintf(vals[6], sizeof vals[6], "PAR_STORE_ADDR=127.0.0.1:%d", port);
  snprintf(vals[7], sizeof vals[7], "PAR_TOKEN=%s", token);
  snprintf(vals[8], sizeof vals[8], "PAR_JOB_ID=%s", job_id);
  snprintf(vals[9], sizeof vals[9], "PAR_CPUS=%d", cpus);
  for (size_t j = 0; j < NJOB_VARS; j++) {
    env[k] = strdup(vals[j]);
    if (!env[k]) {
      for (size_t i = *owned_from; i < k; i++) free(env[i]);
      free(env);
      return NULL;
    }
    k++;
  }
  env[k] = NULL;
  return env;
}

/* A TCP port on 127.0.0.1 that nothing holds now, for MASTER_PORT. Programs written for
 * torchrun (torch.distributed's env:// rendezvous) bind MASTER_PORT on rank 0 themselves, so
 * it cannot be parrun's own store, which the ranks find through PAR_STORE_ADDR instead. As
 * torchrun does, the port is taken from the kernel and released at once: a bound socket that
 * never connected leaves nothing behind, and the kernel hands out ephemeral ports in turn.
 * Returns the port, or -1 with errno set. */
static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int port = -1;
  if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
      getsockname(fd, (struct sockaddr *)&a, &len) == 0)
    port = ntohs(a.sin_port);
  int saved = errno;
  close(fd);
  errno = saved;
  return port;
}

static void free_env(char **env, size_t owned_from) {
  if (!env) return;
  for (size_t i = owned_from; env[i]; i++) free(env[i]);
  free(env);
}

/* Removes the job's shared-memory segments: the library names them /par-<job id>-<name>,
 * and a rank that was killed cannot have unlinked its own. Only this job's: <name> (a group
 * uid "<hex>.<n>" or a buffer's "m<rank>.<n>") has no '-', whereas another job that was
 * given this id as its PAR_JOB_ID has its own suffix, "par-<job id>-<suffix>-<name>". */
static void remove_job_shm(const char *job_id) {
  DIR *d = opendir("/dev/shm");
  if (!d) return;
  char prefix[32];
  int plen = snprintf(prefix, sizeof prefix, "par-%s-", job_id);
  struct dirent *e;
  while ((e = readdir(d)))
    if (!strncmp(e->d_name, prefix, (size_t)plen) && !strchr(e->d_name + plen, '-'))
      unlinkat(dirfd(d), e->d_name, 0);
  closedir(d);
}

/* As the store's host, parrun chooses the job id the ranks use (world.c reads par/job_id),
 * so it knows exactly which segments are the job's. */
static int publish_job_id(int port, const char *token, const char *job_id) {
  par__store *cl = NULL;
  if (par__store_connect("127.0.0.1", port, token, 10.0, &cl) != PAR_OK) return -1;
  int rc = par__store_set(cl, "par/job_id", job_id, strlen(job_id)) == PAR_OK ? 0 : -1;
  par__store_close(cl);
  return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* Launching                                                                                */
/* ---------------------------------------------------------------------------------------- */

/* Forks one rank. Returns its pid; -1 with *exec_err set when PROGRAM could not be exec'd
 * (the child reports its errno through a close-on-exec pipe, which reads EOF once exec
 * worked); -2 with *exec_err set when no process could be made. */
static pid_t spawn_rank(pid_t pgid, const char *path, char **argv, char **env, int devnull,
                        int give_stdin, int out_fd[2], int err_fd[2], int cpu, int *exec_err) {
  int ep[2];
  *exec_err = 0;
  if (pipe2(ep, O_CLOEXEC) != 0) {
    *exec_err = errno;
    return -2;
  }
  pid_t pid = fork();
  if (pid < 0) {
    *exec_err = errno;
    close(ep[0]);
    close(ep[1]);
    return -2;
  }
  if (pid == 0) {
    /* Child: async-signal-safe calls only (sched_setaffinity is a plain system call). */
    setpgid(0, pgid);
    if (cpu >= 0) {
      /* Two ranks that spin-wait for each other on one core would take turns by time slice. */
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(cpu, &one);
      sched_setaffinity(0, sizeof one, &one);
    }
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    sigemptyset(&dfl.sa_mask);
    int sigs[] = {SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGCHLD};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaction(sigs[i], &dfl, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (!give_stdin) dup2(devnull, 0);
    dup2(out_fd[1], 1);
    dup2(err_fd[1], 2);
    execve(path, argv, env);
    int e = errno;
    ssize_t n = write(ep[1], &e, sizeof e);
    (void)n;
    _exit(127);
  }
  /* Also from the parent, so the group exists before we might signal it (classic race). */
  setpgid(pid, pgid ? pgid : pid);
  close(ep[1]);
  int e = 0;
  ssize_t n;
  while ((n = read(ep[0], &e, sizeof e)) < 0 && errno == EINTR) {
  }
  close(ep[0]);
  if (n == (ssize_t)sizeof e) {
    *exec_err = e;
    waitpid(pid, NULL, 0);
    return -1;
  }
  return pid;
}

/* ---------------------------------------------------------------------------------------- */
/* The job: options, setup and launch                                                       */
/* ---------------------------------------------------------------------------------------- */

/* What parrun was asked to run (parse_args). */
typedef struct options {
  int n;
  double timeout_s; /* 0: none */
  int bind;         /* pin rank r to the (r mod C)-th allowed CPU */
  char **prog_argv; /* PROGRAM and its arguments */
} options;

/* What every rank is started with. */
typedef struct launch {
  char *path; /* PROGRAM, resolved before any fork */
  char token[33], job_id[9];
  par__store_server *srv;
  int port, master_port;
  int devnull, stdin_ok, width;
  int cpus[CPU_SETSIZE], ncpus, job_cpus; /* ncpus 0: no pinning */
} launch;

typedef struct job {
  int n;
  rank_proc *ranks;
  pid_t pgid;
  double t0;
  double timeout_s, deadline; /* --timeout, and when it runs out (INFINITY: never) */
  job_state state;
  int exit_code;
  int alive;
  double kill_at;     /* SIGKILL the group then (INFINITY: not scheduled) */
  double drain_until; /* stop waiting for pipes then */
} job;

static void stop_job(job *j, int sig) {
  if (j->pgid > 0) kill(-j->pgid, sig);
  if (sig != SIGKILL && j->kill_at == INFINITY) j->kill_at = par__now() + GRACE_S;
}

static void reap(job *j) {
  for (;;) {
    int status;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid <= 0) return;
    for (int r = 0; r < j->n; r++) {
      rank_proc *rp = &j->ranks[r];
      if (rp->pid != pid || rp->done) continue;
      rp->done = 1;
      rp->status = status;
      j->alive--;
      int failed = !WIFEXITED(status) || WEXITSTATUS(status) != 0;
      if (failed && j->state == RUNNING) {
        char how[64], name[32];
        if (WIFEXITED(status)) {
          snprintf(how, sizeof how, "exit code %d", WEXITSTATUS(status));
          j->exit_code = WEXITSTATUS(status);
        } else {
          int sig = WTERMSIG(status);
          snprintf(how, sizeof how, "killed by signal %d (%s)", sig,
                   sig_name(sig, name, sizeof name));
          j->exit_code = 128 + sig;
        }
        fprintf(stderr, "parrun: rank %d (pid %d) failed first: %s after %.2f s", r, (int)pid, how,
                par__now() - j->t0);
        if (j->alive > 0)
          fprintf(stderr, "; stopping the other %d rank%s\n", j->alive, j->alive == 1 ? "" : "s");
        else
          fprintf(stderr, "\n");
        j->state = STOPPING;
        stop_job(j, SIGTERM);
      }
    }
  }
}

static int parse_args(int argc, char **argv, options *o) {
  *o = (options){.bind = 1};
  int i = 1;
  for (; i < argc; i++) {
    const char *a = argv[i], *val = NULL;
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      fputs(usage_text, stdout);
      exit(0);
    }
    if (!strcmp(a, "--version")) {
      printf("parrun (par) %s\n", par_version_string());
      exit(0);
    }
    if (!strcmp(a, "--")) {
      i++;
      break;
    }
    if (a[0] != '-') break;
    int is_n = !strcmp(a, "-n") || !strcmp(a, "--np");
    int is_t = !strcmp(a, "--timeout");
    if (!strcmp(a, "--bind-to") || !strncmp(a, "--bind-to=", 10)) {
      const char *b = a[9] == '=' ? a + 10 : (i + 1 < argc ? argv[++i] : "");
      if (strcmp(b, "core") && strcmp(b, "none")) {
        fprintf(stderr, "parrun: --bind-to '%s' is not core or none\n", b);
        return -1;
      }
      o->bind = !strcmp(b, "core");
      continue;
    }
    if (is_n || is_t) {
      if (i + 1 >= argc) {
        fprintf(stderr, "parrun: %s needs a value\n", a);
        return -1;
      }
      val = argv[++i];
    } else if (!strncmp(a, "-n", 2) && a[2]) {
      is_n = 1, val = a + 2;
    } else if (!strncmp(a, "--timeout=", 10)) {
      is_t = 1, val = a + 10;
    } else {
      fprintf(stderr, "parrun: unknown option '%s' (see parrun --help)\n", a);
      return -1;
    }
    char *end;
    if (is_n) {
      long v = strtol(val, &end, 10);
      if (end == val || *end || v < 1 || v > MAX_RANKS) {
        fprintf(stderr, "parrun: -n '%s' is not a rank count in 1..%d\n", val, MAX_RANKS);
        return -1;
      }
      o->n = (int)v;
    } else {
      double v = strtod(val, &end);
      if (end == val || *end || !(v > 0) || v > 1e9) {
        fprintf(stderr, "parrun: --timeout '%s' is not a positive number of seconds\n", val);
        return -1;
      }
      o->timeout_s = v;
    }
  }
  if (o->n == 0) {
    fprintf(stderr, "parrun: -n N is required (see parrun --help)\n");
    return -1;
  }
  if (i >= argc) {
    fprintf(stderr, "parrun: no program given (see parrun --help)\n");
    return -1;
  }
  o->prog_argv = argv + i;
  return 0;
}

/* PROGRAM's path, the job's token and id. Returns parrun's exit code on failure, else 0. */
static int prepare(const options *o, launch *l) {
  const char *prog = o->prog_argv[0];
  int err;
  l->path = resolve_program(prog, &err);
  if (!l->path) {
    fprintf(stderr, "parrun: cannot run %s: %s\n", prog, strerror(err));
    return 127;
  }
  if (random_hex(l->token, 16) != 0 || random_hex(l->job_id, 4) != 0) {
    fprintf(stderr, "parrun: cannot read /dev/urandom: %s\n", strerror(errno));
    return 1;
  }
  return 0;
}

static const int handled_sigs[] = {SIGCHLD, SIGINT, SIGTERM, SIGHUP};
#define NHANDLED (sizeof handled_sigs / sizeof handled_sigs[0])

/* The store thread must never take our signals: they stay blocked while it is created (it
 * inherits the mask), and route_signals sends them to the self-pipe afterwards. */
static void block_signals(sigset_t *old) {
  sigset_t handled;
  sigemptyset(&handled);
  for (size_t i = 0; i < NHANDLED; i++) sigaddset(&handled, handled_sigs[i]);
  sigprocmask(SIG_BLOCK, &handled, old);
}

/* The rendezvous store, the job id in it, and a free port for MASTER_PORT. */
static int start_store(launch *l) {
  if (par__store_server_start("127.0.0.1", 0, l->token, &l->srv, &l->port) != PAR_OK) {
    fprintf(stderr, "parrun: cannot start the rendezvous store: %s\n", par__error_detail());
    return 1;
  }
  if (publish_job_id(l->port, l->token, l->job_id) != 0) {
    fprintf(stderr, "parrun: cannot publish the job id in the store: %s\n", par__error_detail());
    return 1;
  }
  l->master_port = free_port();
  if (l->master_port < 0) {
    fprintf(stderr, "parrun: cannot find a free port for MASTER_PORT: %s\n", strerror(errno));
    return 1;
  }
  return 0;
}

static int route_signals(const sigset_t *old) {
  if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
    fprintf(stderr, "parrun: pipe: %s\n", strerror(errno));
    return 1;
  }
  struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESTART | SA_NOCLDSTOP};
  sigemptyset(&sa.sa_mask);
  for (size_t i = 0; i < NHANDLED; i++) sigaction(handled_sigs[i], &sa, NULL);
  signal(SIGPIPE, SIG_IGN); /* a closed stdout must not kill the launcher mid-job */
  sigprocmask(SIG_SETMASK, old, NULL);
  return 0;
}

/* The job's table of ranks, and what each rank is started with besides the store. */
static int job_init(job *j, launch *l, const options *o) {
  *j = (job){.n = o->n, .state = RUNNING, .kill_at = INFINITY, .drain_until = INFINITY};
  j->ranks = calloc((size_t)o->n, sizeof *j->ranks);
  l->devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (!j->ranks || l->devnull < 0) {
    fprintf(stderr, "parrun: out of memory or no /dev/null\n");
    return 1;
  }
  /* A rank reading a terminal from a background process group would be stopped (SIGTTIN):
   * rank 0 gets stdin only when it is a pipe or file. */
  l->stdin_ok = !isatty(0);
  l->width = snprintf(NULL, 0, "%d", o->n - 1);
  j->t0 = par__now();
  j->timeout_s = o->timeout_s;
  j->deadline = o->timeout_s > 0 ? j->t0 + o->timeout_s : INFINITY;

  /* The CPUs we may use, in order: rank r goes on the (r mod ncpus)-th. With more ranks than
   * CPUs that spreads them evenly (measured: a steadier and faster 8-rank job on 2 cores
   * than the kernel's placement, docs/parrun.md). Their number also goes to the ranks
   * (PAR_CPUS): a pinned rank sees one CPU, and a container's host may have many more than
   * the job may use, yet the library must know whether the ranks outnumber the cores. */
  cpu_set_t allowed;
  l->ncpus = 0;
  if (sched_getaffinity(0, sizeof allowed, &allowed) == 0)
    for (int c = 0; c < CPU_SETSIZE; c++)
      if (CPU_ISSET(c, &allowed)) l->cpus[l->ncpus++] = c;
  l->job_cpus = l->ncpus;
  if (!o->bind) l->ncpus = 0;
  return 0;
}

/* Starts rank r with its pipes. Returns 0, or parrun's exit code when it could not. */
static int launch_rank(job *j, const launch *l, char **prog_argv, int r) {
  int op[2] = {-1, -1}, ep[2] = {-1, -1};
  size_t owned_from = 0;
  char **env = build_env(r, j->n, l->port, l->master_port, l->token, l->job_id, l->job_cpus,
                         &owned_from);
  if (!env || pipe2(op, O_CLOEXEC) != 0 || pipe2(ep, O_CLOEXEC) != 0) {
    fprintf(stderr, "parrun: cannot prepare rank %d: %s\n", r, strerror(errno));
    for (int k = 0; k < 2; k++) {
      if (op[k] >= 0) close(op[k]);
      if (ep[k] >= 0) close(ep[k]);
    }
    free_env(env, owned_from);
    return 1;
  }
  int exec_err;
  pid_t pid = spawn_rank(j->pgid, l->path, prog_argv, env, l->devnull, r == 0 && l->stdin_ok,
                         op, ep, l->ncpus ? l->cpus[r % l->ncpus] : -1, &exec_err);
  close(op[1]);
  close(ep[1]);
  free_env(env, owned_from);
  if (pid < 0) {
    close(op[0]);
    close(ep[0]);
    if (pid == -1)
      fprintf(stderr, "parrun: cannot run %s: %s\n", prog_argv[0], strerror(exec_err));
    else
      fprintf(stderr, "parrun: cannot start rank %d: %s\n", r, strerror(exec_err));
    return pid == -1 ? 127 : 1;
  }
  if (j->pgid == 0) j->pgid = pid;
  fcntl(op[0], F_SETFL, O_NONBLOCK);
  fcntl(ep[0], F_SETFL, O_NONBLOCK);
  j->ranks[r].pid = pid;
  pr_stream_init(&j->ranks[r].out, op[0], 1, r, l->width);
  pr_stream_init(&j->ranks[r].err, ep[0], 2, r, l->width);
  j->alive++;
  return 0;
}

/* Starts the ranks in order; when one cannot be started, the job stops with that code. */
static void launch_ranks(job *j, launch *l, char **prog_argv) {
  int failed = 0;
  for (int r = 0; r < j->n && !failed; r++) {
    int code = launch_rank(j, l, prog_argv, r);
    if (code != 0) {
      failed = 1;
      j->exit_code = code;
    }
  }
  free(l->path);
  l->path = NULL;
  close(l->devnull);
  if (!failed) return;
  for (int r = 0; r < j->n; r++)
    if (!j->ranks[r].pid) j->ranks[r].done = 1, j->ranks[r].out.fd = j->ranks[r].err.fd = -1;
  j->state = STOPPING;
  stop_job(j, SIGTERM);
}

/* ---------------------------------------------------------------------------------------- */
/* Watching: one poll() over the self-pipe and every rank's stdout and stderr               */
/* ---------------------------------------------------------------------------------------- */

/* Fills the poll set (closed streams have fd -1, which poll skips); returns how many streams
 * are still open. */
static int fill_poll_set(const job *j, struct pollfd *pf) {
  int open_streams = 0;
  pf[0] = (struct pollfd){.fd = sig_pipe[0], .events = POLLIN};
  for (int r = 0; r < j->n; r++) {
    pf[1 + 2 * r] = (struct pollfd){.fd = j->ranks[r].out.fd, .events = POLLIN};
    pf[2 + 2 * r] = (struct pollfd){.fd = j->ranks[r].err.fd, .events = POLLIN};
    open_streams += (j->ranks[r].out.fd >= 0) + (j->ranks[r].err.fd >= 0);
  }
  return open_streams;
}

/* Something the ranks started still holds their output open after they all exited: end it,
 * keeping what it wrote so far. */
static void end_leftovers(job *j) {
  if (j->pgid > 0) kill(-j->pgid, SIGKILL);
  for (int r = 0; r < j->n; r++) {
    pr_stream_read(&j->ranks[r].out);
    pr_stream_read(&j->ranks[r].err);
    pr_stream_close(&j->ranks[r].out);
    pr_stream_close(&j->ranks[r].err);
  }
}

/* The job's timeout and the SIGKILL after the grace period; returns poll's wait in ms until
 * the next of them (-1: none). */
static int run_timers(job *j, double now) {
  if (j->state == RUNNING && now >= j->deadline) {
    fprintf(stderr, "parrun: job timed out after %g s; stopping all %d rank%s\n", j->timeout_s,
            j->alive, j->alive == 1 ? "" : "s");
    j->state = STOPPING;
    j->exit_code = 124;
    stop_job(j, SIGTERM);
  }
  if (now >= j->kill_at) {
    stop_job(j, SIGKILL);
    j->kill_at = INFINITY;
  }
  double next = j->drain_until;
  if (j->state == RUNNING && j->deadline < next) next = j->deadline;
  if (j->kill_at < next) next = j->kill_at;
  return next == INFINITY ? -1 : (int)fmin(ceil((next - now) * 1000.0), 3.6e6);
}

/* Signals that reached parrun, through the self-pipe: the first that is not SIGCHLD stops
 * the job with 128 + its number; each is forwarded to the ranks; SIGCHLD reaps. */
static void take_signals(job *j) {
  unsigned char sigbuf[64];
  ssize_t got;
  int chld = 0;
  while ((got = read(sig_pipe[0], sigbuf, sizeof sigbuf)) > 0)
    for (ssize_t k = 0; k < got; k++) {
      if (sigbuf[k] == SIGCHLD) {
        chld = 1;
        continue;
      }
      char name[32];
      if (j->state == RUNNING) {
        fprintf(stderr, "parrun: got %s; forwarding it to all ranks\n",
                sig_name(sigbuf[k], name, sizeof name));
        j->state = STOPPING;
        j->exit_code = 128 + sigbuf[k];
      }
      stop_job(j, sigbuf[k]);
    }
  if (chld) reap(j);
}

/* Runs until every rank has exited and its output is drained: forwards output, signals and
 * the first failure (reap). Returns -1 when it cannot even start (no memory). */
static int watch(job *j) {
  struct pollfd *pf = calloc((size_t)(2 * j->n + 1), sizeof *pf);
  if (!pf) {
    stop_job(j, SIGKILL);
    return -1;
  }
  for (;;) {
    int open_streams = fill_poll_set(j, pf);
    if (j->alive == 0 && open_streams == 0) break;
    double now = par__now();
    if (j->alive == 0 && j->drain_until == INFINITY) j->drain_until = now + DRAIN_S;
    if (now >= j->drain_until) {
      end_leftovers(j);
      break;
    }
    int rc = poll(pf, (nfds_t)(2 * j->n + 1), run_timers(j, now));
    if (rc < 0 && errno != EINTR) {
      fprintf(stderr, "parrun: poll: %s\n", strerror(errno));
      stop_job(j, SIGKILL);
      j->exit_code = 1;
      break;
    }
    if (rc <= 0) continue;
    if (pf[0].revents & POLLIN) take_signals(j);
    for (int r = 0; r < j->n; r++) {
      if (pf[1 + 2 * r].revents) pr_stream_read(&j->ranks[r].out);
      if (pf[2 + 2 * r].revents) pr_stream_read(&j->ranks[r].err);
    }
  }
  free(pf);
  return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Ending                                                                                   */
/* ---------------------------------------------------------------------------------------- */

/* Ranks still running here (only after a poll failure) are killed and collected. */
static void collect(job *j) {
  for (int r = 0; r < j->n; r++)
    if (!j->ranks[r].done && j->ranks[r].pid > 0) {
      kill(j->ranks[r].pid, SIGKILL);
      waitpid(j->ranks[r].pid, NULL, 0);
    }
}

/* The store, the job's shared-memory segments (ranks killed mid-job leave theirs), the table. */
static void clean_up(job *j, launch *l) {
  par__store_server_stop(l->srv);
  remove_job_shm(l->job_id);
  free(j->ranks);
}

/* ---------------------------------------------------------------------------------------- */
/* Main                                                                                     */
/* ---------------------------------------------------------------------------------------- */

/* The phases. Exit codes: the first failed rank's (128 + signal for a signal), 124 on
 * --timeout, 128 + signal when parrun was signalled, 2 for usage, 127 when PROGRAM cannot
 * run, 1 when parrun itself cannot start the job. */
int main(int argc, char **argv) {
  options o;
  if (parse_args(argc, argv, &o) != 0) return 2;
  launch l = {.devnull = -1};
  int rc = prepare(&o, &l);
  if (rc != 0) return rc;

  sigset_t old;
  block_signals(&old);
  if ((rc = start_store(&l)) != 0 || (rc = route_signals(&old)) != 0) return rc;

  job j;
  if (job_init(&j, &l, &o) != 0) return 1;
  launch_ranks(&j, &l, o.prog_argv);
  if (watch(&j) != 0) return 1;
  collect(&j);
  clean_up(&j, &l);
  return j.exit_code;
}
