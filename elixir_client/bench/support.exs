defmodule KraitBench.Stats do
  @moduledoc "Medians and percentiles of benchmark samples."

  @doc "The median of a non-empty list of numbers."
  @spec median([number()]) :: float()
  def median(values), do: percentile(values, 50)

  @doc """
  The `p`th percentile (0..100) of a non-empty list, interpolated linearly between the two closest
  ranks (NumPy's default), so a p99 of 50 samples is not simply the largest one.
  """
  @spec percentile([number()], number()) :: float()
  def percentile([_ | _] = values, p) when p >= 0 and p <= 100 do
    sorted = values |> Enum.sort() |> List.to_tuple()
    rank = p / 100 * (tuple_size(sorted) - 1)
    low = floor(rank)
    high = min(low + 1, tuple_size(sorted) - 1)
    a = elem(sorted, low)
    b = elem(sorted, high)
    a + (b - a) * (rank - low) * 1.0
  end

  @doc "Runs `fun` `runs` times and returns the median of what it returns (a number or a map of numbers)."
  @spec median_of(pos_integer(), (() -> number() | map())) :: number() | map()
  def median_of(runs, fun) do
    case Enum.map(1..runs, fn _ -> fun.() end) do
      [%{} = first | _] = maps ->
        Map.new(Map.keys(first), fn key -> {key, median(Enum.map(maps, & &1[key]))} end)

      numbers ->
        median(numbers)
    end
  end

  @doc "The median of each key across `rounds` (maps with the same keys)."
  @spec medians([map()]) :: map()
  def medians([first | _] = rounds),
    do: Map.new(Map.keys(first), fn key -> {key, median(Enum.map(rounds, & &1[key]))} end)

  @doc "A limit's min and max across the rounds it was interleaved with Krait's rows, and how many rounds."
  @spec spread([map()], atom()) :: map()
  def spread(rounds, key) do
    values = Enum.map(rounds, & &1[key])

    %{
      "#{key}_min" => Enum.min(values),
      "#{key}_max" => Enum.max(values),
      "#{key}_rounds" => length(rounds)
    }
  end

  @doc "Microseconds `fun` takes, and its result."
  @spec timed((() -> result)) :: {non_neg_integer(), result} when result: term()
  def timed(fun) do
    started = System.monotonic_time(:microsecond)
    result = fun.()
    {System.monotonic_time(:microsecond) - started, result}
  end
end

defmodule KraitBench.Proc do
  @moduledoc "What Linux's /proc says about a process: memory high-water marks and CPU time."

  @doc "A field of /proc/<pid>/status in MiB (`\"VmHWM\"`, `\"VmRSS\"`), `pid` an OS pid or `:self`."
  @spec status_mb(pos_integer() | :self, String.t()) :: float() | nil
  def status_mb(pid, field) do
    case File.read("/proc/#{pid}/status") do
      {:ok, text} ->
        case Regex.run(~r/^#{field}:\s+(\d+) kB/m, text, capture: :all_but_first) do
          [kb] -> String.to_integer(kb) / 1024
          nil -> nil
        end

      {:error, _} ->
        nil
    end
  end

  @doc """
  Resets the process's peak RSS (VmHWM) to its current RSS (`echo 5 > /proc/<pid>/clear_refs`,
  Linux 4.0+), so that a later VmHWM is the peak of what ran in between. Returns whether it worked.
  """
  @spec reset_peak(pos_integer() | :self) :: boolean()
  def reset_peak(pid), do: File.write("/proc/#{pid}/clear_refs", "5") == :ok

  @doc "User + system CPU time of a process so far, in ms (from /proc/<pid>/stat, 100 Hz ticks)."
  @spec cpu_ms(pos_integer()) :: float() | nil
  def cpu_ms(pid) do
    case File.read("/proc/#{pid}/stat") do
      {:ok, text} ->
        # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        [_, rest] = String.split(text, ") ", parts: 2)
        fields = String.split(rest, " ")
        ticks = String.to_integer(Enum.at(fields, 11)) + String.to_integer(Enum.at(fields, 12))
        ticks * 1000 / clock_ticks()

      {:error, _} ->
        nil
    end
  end

  defp clock_ticks do
    case System.cmd("getconf", ["CLK_TCK"]) do
      {out, 0} -> out |> String.trim() |> String.to_integer()
      _ -> 100
    end
  end
end
