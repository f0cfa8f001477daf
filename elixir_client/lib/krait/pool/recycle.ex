defmodule Krait.Pool.Recycle do
  @moduledoc """
  A pool's recycling policy (the pool option `recycle: [calls: n, age: ms, rss_mb: n]`, any subset)
  as pure data: when a worker is due to be replaced, and why.

  A worker is due when it has been given `calls` calls, has been up for its age limit (`age` ms less
  a random spread of up to 10%, drawn for each worker when it becomes ready: `age_limit/2`), or its
  Python process's resident memory (`VmRSS` in `/proc/PID/status`, read by `Krait.Worker` on each
  health check, see `rss_mb/1`) reached `rss_mb` MiB. The first limit found, in that order, is the
  reason reported in telemetry, metrics and stats.

  Recycling is staggered: the pool starts one replacement at a time, and a worker due while another
  replacement is starting waits (serving on) until that one is ready, so workers started together
  never retire together in a burst of Python starts; the age spread keeps their due times apart too.

  What the pool does (`Krait.Pool.Scheduler`): it starts the replacement first (when no other
  replacement is starting), in the same slot,
  while the worker goes on serving: when the worker is due, or a little before (`replace_now/4`:
  when its age or, at its rate so far, its calls will reach the limit within the time a start
  takes), so that the replacement is ready about when the limit is reached. Until then a due worker
  keeps serving, so the pool never has fewer ready workers than its size; when workers live less
  than a start takes (100 calls at thousands per second), they serve more than their limit. Once
  the replacement is ready the worker takes no new calls, its sessions are forgotten (their next call starts a new session on
  another worker), and it is stopped (SIGTERM: the worker ends its sessions through the adapter's
  `on_session_end`) as soon as its last call has finished.
  """

  @enforce_keys []
  defstruct calls: nil, age: nil, rss_mb: nil

  @typedoc "Why a worker was recycled."
  @type reason :: :calls | :age | :rss_mb

  @typedoc "The limits; `nil` is no limit."
  @type t :: %__MODULE__{
          calls: pos_integer() | nil,
          age: pos_integer() | nil,
          rss_mb: pos_integer() | nil
        }

  @typedoc """
  What the policy looks at: calls given, when it became ready (ms), its last RSS (MiB), and its own
  age limit (`age_limit/2`; the policy's `age` when absent or `nil`).
  """
  @type facts :: %{
          required(:given) => non_neg_integer(),
          required(:ready_at) => integer() | nil,
          optional(:rss_mb) => number() | nil,
          optional(:age_limit) => pos_integer() | nil
        }

  @keys [:calls, :age, :rss_mb]
  # a worker's age limit is up to this fraction below the policy's `age`
  @age_spread 0.1

  @doc "The reasons, in the order they are checked."
  @spec reasons() :: [reason()]
  def reasons, do: @keys

  @doc """
  The policy from the option's value: `nil` or `[]` is no recycling; otherwise a keyword list of
  positive integers under `:calls`, `:age` (ms) and `:rss_mb`. Errors are messages naming what is
  wrong.
  """
  @spec new(keyword() | nil) :: {:ok, t() | nil} | {:error, String.t()}
  def new(nil), do: {:ok, nil}
  def new([]), do: {:ok, nil}

  def new(opts) when is_list(opts) do
    cond do
      not Keyword.keyword?(opts) ->
        {:error, "option :recycle must be a keyword list, got: #{inspect(opts, limit: 10)}"}

      (unknown = Enum.uniq(Keyword.keys(opts)) -- @keys) != [] ->
        {:error, "option :recycle: unknown key(s) #{inspect(unknown)}; known: #{inspect(@keys)}"}

      (bad = Enum.find(opts, fn {_k, v} -> not (is_integer(v) and v > 0) end)) != nil ->
        {k, v} = bad
        {:error, "option :recycle: #{k} must be a positive integer, got: #{inspect(v)}"}

      length(Keyword.keys(opts)) != length(Enum.uniq(Keyword.keys(opts))) ->
        {:error, "option :recycle: a key is given twice: #{inspect(opts)}"}

      true ->
        {:ok, struct(__MODULE__, opts)}
    end
  end

  def new(other), do: {:error, "option :recycle must be a keyword list, got: #{inspect(other)}"}

  @doc """
  Why the worker is due for recycling at `now` (ms, the clock of `ready_at`), or `nil` if it is
  not (or the policy is `nil`).
  """
  @spec due(t() | nil, facts(), integer()) :: reason() | nil
  def due(nil, _facts, _now), do: nil

  def due(%__MODULE__{} = p, facts, now) do
    ready_at = facts[:ready_at]
    rss = facts[:rss_mb]
    age = age(p, facts)

    cond do
      p.calls != nil and facts.given >= p.calls -> :calls
      age != nil and ready_at != nil and now - ready_at >= age -> :age
      p.rss_mb != nil and rss != nil and rss >= p.rss_mb -> :rss_mb
      true -> nil
    end
  end

  @doc """
  Why the worker's replacement should start now: it is `due/3`, or it will be within `lead` ms (the
  time a replacement takes to start, with a margin) by its age or, at its call rate since it became
  ready, by its calls. Starting the replacement that early lets it take over when the worker reaches
  its limit rather than well past it, without the pool ever having fewer ready workers. Memory
  cannot be foreseen: `:rss_mb` is only ever due.
  """
  @spec replace_now(t() | nil, facts(), integer(), non_neg_integer()) :: reason() | nil
  def replace_now(nil, _facts, _now, _lead), do: nil

  def replace_now(%__MODULE__{} = p, facts, now, lead) do
    due(p, facts, now) || soon(p, facts, now, lead)
  end

  defp soon(_p, %{ready_at: nil}, _now, _lead), do: nil

  defp soon(p, %{given: given, ready_at: ready_at} = facts, now, lead) do
    elapsed = max(now - ready_at, 1)
    age = age(p, facts)

    cond do
      p.calls != nil and given > 0 and (p.calls - given) * elapsed / given <= lead -> :calls
      age != nil and elapsed >= age - lead -> :age
      true -> nil
    end
  end

  defp age(p, facts), do: Map.get(facts, :age_limit) || p.age

  @doc """
  A worker's own age limit: the policy's `age` less up to 10% (`x`, in `[0, 1)`, is where in that
  spread; random by default), so that workers started together are not all due at once; `nil`
  without an age limit.
  """
  @spec age_limit(t() | nil, float()) :: pos_integer() | nil
  def age_limit(policy, x \\ :rand.uniform())

  def age_limit(%__MODULE__{age: age}, x) when age != nil,
    do: max(age - trunc(age * @age_spread * x), 1)

  def age_limit(_policy, _x), do: nil

  @doc """
  How long before a worker's limit its replacement starts: 1.5 times `startup_ms` (the last measured
  start, spawn to ready) plus 50 ms.
  """
  @spec lead(non_neg_integer()) :: non_neg_integer()
  def lead(startup_ms), do: div(startup_ms * 3, 2) + 50

  @doc "Whether the policy needs the workers' RSS (read on each health check)."
  @spec watch_rss?(t() | nil) :: boolean()
  def watch_rss?(%__MODULE__{rss_mb: mb}) when mb != nil, do: true
  def watch_rss?(_), do: false

  @doc """
  Ms from a worker's `ready_at` to when its replacement should start for its age (`lead` ms before
  the limit), for a timer: from the policy's `age` or a worker's own limit (`age_limit/2`); `nil`
  without an age limit.
  """
  @spec age_timer(t() | pos_integer() | nil, non_neg_integer()) :: non_neg_integer() | nil
  def age_timer(%__MODULE__{age: age}, lead) when age != nil, do: max(age - lead, 0)
  def age_timer(age, lead) when is_integer(age), do: max(age - lead, 0)
  def age_timer(_policy, _lead), do: nil

  @doc """
  The resident set size in MiB from the text of `/proc/PID/status` (its `VmRSS:` line, in kB), or
  `nil` when it has none (a zombie, or not Linux).
  """
  @spec rss_mb(String.t()) :: float() | nil
  def rss_mb(status) do
    case Regex.run(~r/^VmRSS:\s+(\d+)\s+kB/m, status) do
      [_, kb] -> String.to_integer(kb) / 1024
      nil -> nil
    end
  end

  @doc """
  The delay before retrying a replacement that failed to start: `min` ms doubled for each failure
  in a row, at most `max`.
  """
  @spec retry_delay(pos_integer(), pos_integer(), pos_integer()) :: pos_integer()
  def retry_delay(failures, min, max), do: Kernel.min(min * Integer.pow(2, failures - 1), max)

  @doc "Why worker `w` is due, for the log: its calls, its age at `now`, or its memory."
  @spec due_text(reason(), map(), integer()) :: String.t()
  def due_text(:calls, w, _now), do: "#{w.given} calls given"
  def due_text(:age, w, now), do: "up #{now - w.ready_at} ms"
  def due_text(:rss_mb, w, _now), do: "#{Float.round(w.rss_mb * 1.0, 1)} MiB resident"

  @doc """
  When to look at worker `w`'s age again (ms, at least 10), when it is up, not due yet and has an
  age limit: the start-up measure (`startup_ms`) may have changed since its timer was set. nil
  otherwise.
  """
  @spec recheck_in(map() | nil, non_neg_integer(), integer()) :: pos_integer() | nil
  def recheck_in(
        %{recycle: nil, status: status, ready_at: ready_at, age_limit: age_limit},
        startup_ms,
        now
      )
      when status in [:idle, :busy] and age_limit != nil do
    max(age_timer(age_limit, lead(startup_ms)) - (now - ready_at), 10)
  end

  def recheck_in(_w, _startup_ms, _now), do: nil
end
