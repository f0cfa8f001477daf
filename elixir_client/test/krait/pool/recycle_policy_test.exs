defmodule Krait.Pool.RecyclePolicyTest do
  # Krait.Pool.Recycle, the policy as pure data: parsing, when a worker is due, when its replacement
  # starts, and the RSS read from /proc/PID/status.
  use ExUnit.Case, async: true

  alias Krait.Pool.Recycle

  test "new/1 takes any subset of calls, age and rss_mb; nothing is no policy" do
    assert {:ok, nil} = Recycle.new([])
    assert {:ok, nil} = Recycle.new(nil)
    assert {:ok, %Recycle{calls: 5, age: nil, rss_mb: nil}} = Recycle.new(calls: 5)
    assert {:ok, %Recycle{calls: nil, age: 10, rss_mb: 300}} = Recycle.new(age: 10, rss_mb: 300)

    for {bad, says} <- [
          {[calls: 0], "calls must be a positive integer"},
          {[rss_mb: 1.5], "rss_mb must be a positive integer"},
          {[ttl: 5], "unknown key(s) [:ttl]"},
          {[calls: 1, calls: 2], "given twice"},
          {[:calls], "keyword list"},
          {"calls", "keyword list"}
        ] do
      assert {:error, message} = Recycle.new(bad)
      assert message =~ says
    end
  end

  test "due/3: the first limit reached, in the order calls, age, rss_mb" do
    {:ok, p} = Recycle.new(calls: 10, age: 1_000, rss_mb: 100)
    fresh = %{given: 0, ready_at: 0, rss_mb: 50.0}
    assert Recycle.due(p, fresh, 10) == nil
    assert Recycle.due(p, %{fresh | given: 9}, 999) == nil
    assert Recycle.due(p, %{fresh | given: 10}, 10) == :calls
    assert Recycle.due(p, fresh, 1_000) == :age
    assert Recycle.due(p, %{fresh | rss_mb: 100.0}, 10) == :rss_mb
    assert Recycle.due(p, %{given: 10, ready_at: 0, rss_mb: 500.0}, 5_000) == :calls
    # not ready yet, RSS not read yet: nothing to judge
    assert Recycle.due(p, %{given: 0, ready_at: nil, rss_mb: nil}, 5_000) == nil
    assert Recycle.due(nil, %{given: 10_000, ready_at: 0}, 10_000_000) == nil
  end

  test "replace_now/4 starts the replacement a start-up's time before calls or age are reached" do
    {:ok, p} = Recycle.new(calls: 100, age: 10_000)
    lead = Recycle.lead(400)
    assert lead == 650

    # 10 calls in 1 s: 90 left take 9 s, more than the lead
    assert Recycle.replace_now(p, %{given: 10, ready_at: 0}, 1_000, lead) == nil
    # 90 calls in 1 s: 10 left take ~111 ms, within the lead
    assert Recycle.replace_now(p, %{given: 90, ready_at: 0}, 1_000, lead) == :calls
    # age: from 10,000 - 650 ms on
    assert Recycle.replace_now(p, %{given: 0, ready_at: 0}, 9_349, lead) == nil
    assert Recycle.replace_now(p, %{given: 0, ready_at: 0}, 9_350, lead) == :age
    # memory is never foreseen
    {:ok, rss} = Recycle.new(rss_mb: 100)
    assert Recycle.replace_now(rss, %{given: 5, ready_at: 0, rss_mb: 99.9}, 1, lead) == nil
    assert Recycle.replace_now(rss, %{given: 5, ready_at: 0, rss_mb: 100.0}, 1, lead) == :rss_mb
  end

  test "age_timer/2 fires the lead before the age limit" do
    {:ok, p} = Recycle.new(age: 5_000)
    assert Recycle.age_timer(p, 650) == 4_350
    assert Recycle.age_timer(p, 9_000) == 0
    assert Recycle.age_timer(nil, 650) == nil
    assert Recycle.age_timer(%Recycle{calls: 3}, 650) == nil
  end

  test "age_limit/2: each worker's age is the policy's less up to 10%, drawn at random" do
    {:ok, p} = Recycle.new(age: 10_000)
    assert Recycle.age_limit(p, 0.0) == 10_000
    assert Recycle.age_limit(p, 0.5) == 9_500
    assert Recycle.age_limit(p, 0.9999) == 9_001
    assert Recycle.age_limit(nil, 0.5) == nil
    assert Recycle.age_limit(%Recycle{calls: 3}) == nil

    drawn = for _ <- 1..200, do: Recycle.age_limit(p)
    assert Enum.all?(drawn, &(&1 in 9_001..10_000))
    # spread out, not one value
    assert length(Enum.uniq(drawn)) > 50
    assert Recycle.age_limit(%Recycle{age: 1}, 0.99) == 1

    # a worker's own limit is the one due/3, replace_now/4 and age_timer/2 go by
    facts = %{given: 0, ready_at: 0, age_limit: 9_500}
    assert Recycle.due(p, facts, 9_499) == nil
    assert Recycle.due(p, facts, 9_500) == :age
    assert Recycle.replace_now(p, facts, 9_500 - 650, 650) == :age
    assert Recycle.replace_now(p, facts, 9_500 - 651, 650) == nil
    assert Recycle.age_timer(9_500, 650) == 8_850
  end

  test "rss_mb/1 reads VmRSS in kB as MiB; this process's own status has one" do
    status = "Name:\tpython\nVmPeak:\t  999999 kB\nVmRSS:\t  204800 kB\nRssAnon:\t 1 kB\n"
    assert Recycle.rss_mb(status) == 200.0
    assert Recycle.rss_mb("Name:\tzombie\nState:\tZ (zombie)\n") == nil
    assert is_float(Recycle.rss_mb(File.read!("/proc/self/status")))
  end

  test "watch_rss?/1 and retry_delay/3" do
    assert Recycle.watch_rss?(%Recycle{rss_mb: 1})
    refute Recycle.watch_rss?(%Recycle{calls: 1})
    refute Recycle.watch_rss?(nil)

    assert Enum.map(1..6, &Recycle.retry_delay(&1, 100, 1_000)) == [
             100,
             200,
             400,
             800,
             1_000,
             1_000
           ]
  end
end
