defmodule Krait.Options do
  @moduledoc """
  Option schemas: each option is declared once (name, type, default, doc) and that declaration
  validates options, fills in defaults and writes the options table in the module docs.

  A schema is a keyword list of `{name, spec}`, where `spec` is a keyword list:

    * `:type` - see `t:type/0`;
    * `:default` - the value when the option is not given (omit for no default);
    * `:required` - `true` if the option must be given;
    * `:doc` - one line for the docs table; `false` hides an option meant for tests.

  Validation errors name the option, say what was expected and what was given, and, for an
  unknown option, suggest the nearest known one.

  Written here rather than taken from `nimble_options` because Krait depends on nothing outside
  Elixir/OTP (hex.pm packages are not available to all its users).
  """

  @typedoc """
  An option type:

    * `:any`, `:atom`, `:string`, `:boolean`, `:pos_integer`, `:non_neg_integer`;
    * `:timeout` - a positive integer (ms) or `:infinity`;
    * `:server` - a process: an atom name, a pid, `{:global, term}` or `{:via, module, term}`;
    * `:env` - environment variables: a map or list of `{name, value}`, `nil` or `false` unsets one;
    * `:metadata` - a flat map of string (or atom) keys to strings, numbers or atoms;
    * `:keyword` - a keyword list (its keys are checked by the option's own code);
    * `{:in, values}` - one of `values`;
    * `{:list, type}` - a list of values of `type`;
    * `{:or, types}` - any of `types`.
  """
  @type type ::
          :any
          | :atom
          | :string
          | :boolean
          | :pos_integer
          | :non_neg_integer
          | :timeout
          | :server
          | :env
          | :metadata
          | :keyword
          | {:in, [term()]}
          | {:list, type()}
          | {:or, [type()]}

  @type schema :: keyword(keyword())

  @doc """
  Validates `opts` against `schema`: `{:ok, map}` with every option of the schema (defaults
  filled in; options without a default that were not given are absent) or `{:error, message}`.
  """
  @spec validate(term(), schema()) :: {:ok, map()} | {:error, String.t()}
  def validate(opts, schema) when is_list(opts) do
    if Keyword.keyword?(opts) do
      with :ok <- check_unknown(opts, schema),
           :ok <- check_required(opts, schema) do
        Enum.reduce_while(schema, {:ok, %{}}, fn {key, spec}, {:ok, acc} ->
          case fetch(opts, key, spec) do
            :absent ->
              {:cont, {:ok, acc}}

            {:ok, value} ->
              case check_type(value, spec[:type]) do
                :ok -> {:cont, {:ok, Map.put(acc, key, value)}}
                {:error, expected} -> {:halt, {:error, type_error(key, expected, value)}}
              end
          end
        end)
      end
    else
      {:error, "options must be a keyword list, got: #{inspect(opts, limit: 10)}"}
    end
  end

  def validate(opts, _schema),
    do: {:error, "options must be a keyword list, got: #{inspect(opts, limit: 10)}"}

  @doc "The options table of `schema`, as Markdown for a `@moduledoc`."
  @spec docs(schema()) :: String.t()
  def docs(schema) do
    rows =
      for {key, spec} <- schema, spec[:doc] != false do
        default =
          cond do
            spec[:required] -> "required"
            Keyword.has_key?(spec, :default_doc) -> spec[:default_doc]
            Keyword.has_key?(spec, :default) -> "`#{default_text(spec[:default])}`"
            true -> ""
          end

        "| `#{inspect(key)}` | #{type_doc(spec[:type])} | #{default} | #{spec[:doc]} |"
      end

    Enum.join(["| option | type | default | what |", "|---|---|---|---|" | rows], "\n")
  end

  # 300000 reads better as 300_000 (and 1000 as 1_000)
  defp default_text(value) when is_integer(value) and value >= 1_000 do
    value
    |> Integer.to_string()
    |> String.reverse()
    |> String.replace(~r/(\d{3})(?=\d)/, "\\1_")
    |> String.reverse()
  end

  defp default_text(value), do: inspect(value)

  ## Checks

  defp check_unknown(opts, schema) do
    case Enum.find(opts, fn {key, _} -> not Keyword.has_key?(schema, key) end) do
      nil ->
        :ok

      {key, _} ->
        known = Keyword.keys(schema)
        {:error, "unknown option #{inspect(key)}#{suggestion(key, known)}"}
    end
  end

  defp check_required(opts, schema) do
    case Enum.find(schema, fn {key, spec} -> spec[:required] && opts[key] == nil end) do
      nil -> :ok
      {key, spec} -> {:error, "option #{inspect(key)} is required: #{spec[:doc]}"}
    end
  end

  defp fetch(opts, key, spec) do
    case Keyword.fetch(opts, key) do
      {:ok, value} -> {:ok, value}
      :error -> if Keyword.has_key?(spec, :default), do: {:ok, spec[:default]}, else: :absent
    end
  end

  defp suggestion(key, known) when is_atom(key) do
    name = Atom.to_string(key)

    {best, score} =
      known
      |> Enum.map(&{&1, String.jaro_distance(name, Atom.to_string(&1))})
      |> Enum.max_by(&elem(&1, 1), fn -> {nil, 0.0} end)

    if score >= 0.75, do: " (did you mean #{inspect(best)}?)", else: ""
  end

  defp suggestion(_key, _known), do: ""

  defp type_error(key, expected, value),
    do: "option #{inspect(key)} must be #{expected}, got: #{inspect(value, limit: 10)}"

  @doc false
  @spec check_type(term(), type()) :: :ok | {:error, String.t()}
  def check_type(value, type) do
    if valid?(value, type), do: :ok, else: {:error, type_doc(type, :plain)}
  end

  defp valid?(_value, :any), do: true
  defp valid?(value, :atom), do: is_atom(value)
  defp valid?(value, :string), do: is_binary(value) and String.valid?(value)
  defp valid?(value, :boolean), do: is_boolean(value)
  defp valid?(value, :pos_integer), do: is_integer(value) and value > 0
  defp valid?(value, :non_neg_integer), do: is_integer(value) and value >= 0
  defp valid?(value, :timeout), do: value == :infinity or valid?(value, :pos_integer)
  defp valid?(value, :server), do: server?(value)
  defp valid?(value, :env), do: env?(value)
  defp valid?(value, :metadata), do: is_map(value) and Enum.all?(value, &metadata_pair?/1)
  defp valid?(value, :keyword), do: Keyword.keyword?(value)
  defp valid?(value, {:in, values}), do: value in values
  defp valid?(value, {:list, type}), do: is_list(value) and Enum.all?(value, &valid?(&1, type))
  defp valid?(value, {:or, types}), do: Enum.any?(types, &valid?(value, &1))

  defp server?(value) when is_atom(value), do: value != nil
  defp server?(value) when is_pid(value), do: true
  defp server?({:global, _}), do: true
  defp server?({:via, module, _}), do: is_atom(module)
  defp server?(_), do: false

  defp env?(value) when is_map(value) or is_list(value) do
    Enum.all?(value, fn
      {k, v} -> env_name?(k) and (is_nil(v) or v == false or env_name?(v))
      _ -> false
    end)
  end

  defp env?(_), do: false

  defp env_name?(value), do: (is_binary(value) and String.valid?(value)) or is_atom(value)

  defp metadata_pair?({k, v}) do
    (is_binary(k) or is_atom(k)) and
      ((is_binary(v) and String.valid?(v)) or is_number(v) or (is_atom(v) and not is_nil(v)))
  end

  ## Docs

  defp type_doc(type, style \\ :markdown)
  defp type_doc(:any, _), do: "any term"
  defp type_doc(:keyword, _), do: "a keyword list"
  defp type_doc(:atom, _), do: "an atom"
  defp type_doc(:string, _), do: "a string"
  defp type_doc(:boolean, _), do: "a boolean"
  defp type_doc(:pos_integer, _), do: "a positive integer"
  defp type_doc(:non_neg_integer, _), do: "a non-negative integer"
  defp type_doc(:timeout, :markdown), do: "ms or `:infinity`"
  defp type_doc(:timeout, :plain), do: "a positive integer (ms) or :infinity"
  defp type_doc(:server, _), do: "a pool name (atom, pid, {:global, _} or {:via, _, _})"
  defp type_doc(:env, _), do: "a map or list of {name, value} strings (nil unsets)"
  defp type_doc(:metadata, _), do: "a flat map of string keys to strings, numbers or atoms"
  defp type_doc({:list, :string}, _), do: "a list of strings"
  defp type_doc({:list, type}, style), do: "a list, each #{type_doc(type, style)}"

  defp type_doc({:in, values}, :markdown),
    do: "one of " <> Enum.map_join(values, ", ", &"`#{inspect(&1)}`")

  defp type_doc({:in, values}, :plain), do: "one of " <> Enum.map_join(values, ", ", &inspect/1)
  defp type_doc({:or, types}, style), do: Enum.map_join(types, " or ", &type_doc(&1, style))
end
